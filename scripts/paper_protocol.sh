#!/usr/bin/env bash
# Paper-scale protocol (CIRKD recipe) on Cityscapes or Pascal VOC with torchrun:
# DeepLabV3-ResNet101 teacher -> DeepLabV3-ResNet18 student, batch 16 (global), 40k iterations,
# SGD lr 0.02 momentum 0.9 poly 0.9, crop 512x1024 (cityscapes) / 512x512 (voc), output stride 8.
# Every student row uses the same teacher and the same number of iterations.
# Each row is one loss recipe with CIRKD's weights (docs/method.md "Recipes"):
#   none    CE only                                   train_baseline/citys/deeplabv3_res18.sh
#   kd      KD 1                                      train_kd.py --lambda-kd 1
#   ifvd    KD 1 + IFV 20 + adversarial 0.001 / D 0.1 train_kd/train_ifvd.sh
#   cwd     KD 1 + CWD features 50 + CWD logits 3 + adversarial 0.001 / D 0.1   train_kd/train_cwd.sh
#   fitnet  KD 1 + FitNet 10                          train_kd/train_fitnet.sh
#   cirkd   KD 1 + mini-batch pixel 1 + memory pixel 0.1 + memory region 0.1 (voc: 0.01 / 0.01)
#                                                     train_cirkd/{citys,voc}/deeplabv3_res18.sh
#   frkd    FRKD feature terms + KD on the filter's foreground
#   idd     IDD 20 alone (not a CIRKD row; add it to METHODS to run it)
#   skd     KD 1 + SKD 10 + adversarial 0.001 / D 0.1   train_kd/train_skd.sh   (add to METHODS)
#   at      KD 1 + AT 10000                             train_kd/train_at.sh    (add to METHODS)
#   dsd     PSD 1000 + CSD 10                           train_kd/train_dsd.sh   (add to METHODS)
# One row by hand, e.g. CIRKD's IFVD row:  torchrun ... -m frkd.train --method ifvd  (weights built in;
# any --lambda-* flag overrides one or adds a term).
#
# Usage:  DATA=/data/cityscapes scripts/paper_protocol.sh cityscapes
#         DATA=/data/VOCAug TEACHER=runs/paper-voc/teacher/last.pt scripts/paper_protocol.sh voc
# Environment (all optional except DATA):
#   NPROC=8                      GPUs (torchrun --nproc_per_node); 16 must be divisible by it
#   TEACHER=path                 a trained teacher (frkd checkpoint or state_dict); without it the
#                                teacher is trained first (40k iterations) into $OUT/teacher/
#   R101_PRETRAINED, R18_PRETRAINED  torchvision ImageNet .pth files for the backbones (recommended:
#                                the reference numbers below all start from ImageNet weights)
#   METHODS="none kd ifvd cwd fitnet cirkd frkd"   SEEDS="0"   ABLATIONS=0 (1: add FRKD ablation rows)
#   LR=0.02  OUT=runs/paper-<dataset>  EXTRA="--amp bf16"  (more frkd.train flags for every run)
# Runs resume (--resume auto) when the script is started again; finished runs are skipped.
# At the end scripts/paper_table.py prints the table (mean ± std over seeds) beside the
# reference numbers of docs/method.md ("Paper-scale protocol").
#
# CIRKDv2's README rows:  DATA=/data/ade20k TEACHER=deeplabv3_resnet101_ade20k_best_model.pth \
#                         scripts/paper_protocol.sh cirkdv2 cityscapes|ade20k|coco_stuff_164k
# runs the Baseline and CIRKDv2 rows of the README table that frkd's models can run (DeepLabV3-ResNet18
# student, DeepLabV3-ResNet101 teacher), one command per row, each with its CIRKD script's flags
# (scripts/train_baseline|train_cirkdv2/<dataset>/deeplabv3_resnet18.sh; README val/test mIoU beside it).
# TEACHER is required there (CIRKD's released teachers). The other README rows have students frkd
# does not build (UperNet, MobileNetV3, MobileViT, SegFormer): every Pascal VOC row, and on
# Cityscapes/ADE20K/COCO-Stuff the upernet_resnet18, *_mobilenetv3_*, *_mobilevit_xxs and segformer_b0 rows.
set -euo pipefail

cirkdv2_rows() {  # cirkdv2_rows <dataset>: one frkd.train command per CIRKDv2 README row
  local dataset=$1 out=${OUT:-runs/cirkdv2-$1} fitnet size
  case "$dataset" in  # README: baseline / CIRKDv2 mIoU; the scripts' batch, LR, crop and --lambda-fitnet
    cityscapes) size=(--batch-size 8 --lr 0.01 --crop-size 512 1024); fitnet=1 ;;   # 73.56 / 75.60 (test)
    ade20k) size=(--batch-size 16 --lr 0.02 --crop-size 512 512); fitnet=1 ;;       # 36.92 / 39.82 (val)
    coco_stuff_164k) size=(--batch-size 16 --lr 0.02 --crop-size 512 512); fitnet=10 ;;  # 32.65 / 34.42 (val)
    *) echo "usage: DATA=<dataset root> TEACHER=<teacher .pth> $0 cirkdv2 cityscapes|ade20k|coco_stuff_164k" >&2
       exit 2 ;;
  esac
  : "${DATA:?set DATA to the $dataset root folder}"
  : "${TEACHER:?set TEACHER to the CIRKD DeepLabV3-ResNet101 teacher of $dataset}"
  local run=(torchrun --standalone --nproc_per_node="${NPROC:-8}" -m frkd.train --dataset "$dataset" --data "$DATA"
             --student-model deeplabv3 --student-backbone resnet18
             ${R18_PRETRAINED:+--student-pretrained-base "$R18_PRETRAINED"} --max-iterations 80000 --resume auto
             "${size[@]}")
  "${run[@]}" --method none --out-dir "$out/baseline"
  "${run[@]}" --teacher-pretrained "$TEACHER" --method cirkdv2 --lambda-fitnet "$fitnet" --lambda-minibatch-channel 1 \
    --lambda-memory-channel 0.1 --lambda-channel-kd 100 --out-dir "$out/cirkdv2"
}

DATASET=${1:-}
case "$DATASET" in
  cityscapes|voc) ;;
  cirkdv2) cirkdv2_rows "${2:-}"; exit 0 ;;
  *) echo "usage: DATA=<dataset root> $0 cityscapes|voc, or $0 cirkdv2 <dataset>" >&2; exit 2 ;;
esac
: "${DATA:?set DATA to the $DATASET root folder}"
NPROC=${NPROC:-8}
METHODS=${METHODS:-none kd ifvd cwd fitnet cirkd frkd}
SEEDS=${SEEDS:-0}
LR=${LR:-0.02}
OUT=${OUT:-runs/paper-$DATASET}
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"

train() {  # train <out dir> <frkd.train flags...>; skipped when <out dir>/summary.json exists
  local out=$1; shift
  if [ -f "$out/summary.json" ]; then echo "skip $out (finished)"; return; fi
  torchrun --standalone --nproc_per_node="$NPROC" -m frkd.train --dataset "$DATASET" --data "$DATA" \
    --batch-size 16 --max-iterations 40000 --lr "$LR" --power 0.9 --out-dir "$out" --resume auto \
    "${EXTRA_FLAGS[@]}" "$@"
}

if [ -z "${TEACHER:-}" ]; then
  train "$OUT/teacher" --method none --student-backbone resnet101 \
    ${R101_PRETRAINED:+--student-pretrained-base "$R101_PRETRAINED"}
  TEACHER=$OUT/teacher/last.pt
fi

ROWS=()
for method in $METHODS; do ROWS+=("$method|--method $method"); done
if [ "${ABLATIONS:-0}" = 1 ]; then  # the ablation rows of python -m frkd.compare (frkd/compare.py)
  ROWS+=("frkd-no-pseudo-filter|--method frkd --no-pseudo-filter" "frkd-no-fgbg|--method frkd --no-fgbg"
         "frkd-no-coord-mask|--method frkd --no-coord-mask" "frkd-no-intra|--method frkd --lambda-intra 0"
         "frkd-no-inter|--method frkd --lambda-inter 0")
fi
for seed in $SEEDS; do
  for row in "${ROWS[@]}"; do
    read -r -a flags <<< "${row#*|}"
    train "$OUT/${row%%|*}-s$seed" "${flags[@]}" --seed "$seed" --teacher-ckpt "$TEACHER" \
      --student-backbone resnet18 ${R18_PRETRAINED:+--student-pretrained-base "$R18_PRETRAINED"}
  done
done
python scripts/paper_table.py "$OUT" "$DATASET"
