#!/usr/bin/env bash
# One GPU run of frkd: build, test, sanitize, benchmark, train. Usage:
#
#     bash scripts/gpu_check.sh OUTDIR
#
# Writes everything under OUTDIR: one log per step, JSON and markdown from the benchmarks and the
# sanitizer script, env.md (versions, missing packages), steps.tsv and summary.md (PASS / FAIL /
# SKIP per step with its duration and limit). Each step runs under `timeout`; a failing step does
# not stop the others; the whole run keeps to GPU_CHECK_BUDGET_S seconds (default 420): a step
# gets at most what is left, and is skipped when under 15 s are left. Exit status 1 when a step
# failed, else 0.
#
# With a CUDA device (the H200 of docs/performance.md):
#   env         versions, nvidia-smi, the Python packages the suite and the trainer need
#   build       the extension with its CUDA kernels for sm_90, 16 parallel jobs
#   backends    frkd_kernels.backends(verbose=True): triton and cuda must be live
#   then in parallel (correctness, not timed):
#     tests       the test suite on the GPU (pytest-xdist when present), its summary line
#     memcheck    compute-sanitizer memcheck on scripts/gpu_sanitize_ops.py (cuda backend)
#     racecheck   compute-sanitizer racecheck on the same
#     ops         the same script without the sanitizer on the cuda and triton backends, fp32 + bf16
#     torchrun    torchrun --nproc_per_node=1: scripts/gpu_ddp_probe.py (nccl, SyncBatchNorm, DDP), then
#                 frkd.train stopped at iteration 2 and resumed (--resume auto)
#   then one at a time (timed):
#     bench-cs    python -m bench on cs-b8-c256, every live backend and peer, peak memory
#     step-share  the training-step share at Cityscapes shapes (bench/step_share.py)
#     main-job    the README's main job: python -m frkd.train --device cuda (time, mIoU)
#     bench-voc   python -m bench on voc-b8-c256
# Without one it is a dry run: the GPU-only steps are skipped with a message each, and the others
# run on the CPU at tiny size (ops on the cpu backend, bench and step share on the `tiny` set, two
# iterations of training), so a typo costs no GPU minute.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S, GPU_CHECK_ONLY="step step ..." (run
# only these of the steps that can run here; the others are skipped as not selected).
# On the device machine only OUTDIR's first 8 files come back: pack it, e.g.
#   bash scripts/gpu_check.sh /tmp/gc; tar czf $OUT/gpu_check.tgz --exclude='*.pt' -C /tmp gc; cp /tmp/gc/summary.md $OUT/
# The main job's pretext backbones are shipped (frkd/pretext_weights): nothing is built on the device, so
# that step times the teacher and the student only.
set -u -o pipefail

if [ $# -ne 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: bash scripts/gpu_check.sh OUTDIR   (see the header of this script)" >&2
  exit 2
fi
mkdir -p "$1" || { echo "gpu_check: OUTDIR: cannot create $1" >&2; exit 2; }
OUTDIR=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
ONLY=" ${GPU_CHECK_ONLY:-} "
STARTED=$(date +%s)
STEPS="$OUTDIR/steps.tsv"
: >"$STEPS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  GPU=1 DEVICE=cuda
else
  GPU=0 DEVICE=cpu
fi
NO_GPU="no GPU here (dry run)"

record() {  # name status seconds limit note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$STEPS"
  echo "[gpu_check] $1: $2${5:+ ($5)} ${3}s"
}

skip() {  # name why
  record "$1" SKIP 0 - "$2"
}

selected() {
  [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]
}

# step NAME LIMIT_S COMMAND...: runs COMMAND under timeout, output to OUTDIR/NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  if ! selected "$name"; then skip "$name" "not selected by GPU_CHECK_ONLY"; return 0; fi
  local left=$((BUDGET - ($(date +%s) - STARTED)))
  if [ "$left" -lt 15 ]; then skip "$name" "budget of ${BUDGET}s spent"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0 rc status note=""
  t0=$(date +%s)
  echo "[gpu_check] $name: $* (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=PASS; else status=FAIL; note="exit $rc"; fi
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then note="timed out after ${limit}s"; fi
  record "$name" "$status" $(($(date +%s) - t0)) "$limit" "$note"
}

# --- the steps' commands (functions, so that `timeout` runs them in a child bash) ----------------

env_report() {
  echo "# gpu_check environment"
  echo
  echo "- UTC: $(date -u '+%Y-%m-%d %H:%M'); host $(hostname); $(nproc) CPU cores; GPU run: $([ "$GPU" = 1 ] && echo yes || echo 'no (dry run)')"
  echo "- commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
  echo "- nvcc: $(command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1 || echo 'not found')"
  echo "- compute-sanitizer: $(command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -n 1 || echo 'not found')"
  if command -v nvidia-smi >/dev/null; then
    echo "- nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader)"
  fi
  "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print(f"- python {platform.python_version()} ({sys.executable}); torch {torch.__version__} (CUDA {torch.version.cuda})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"- device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
# what the suite (pytest, expecttest, pillow, matplotlib, tqdm) and the trainer need, and helpers
missing = []
for module, purpose in (("triton", "triton backend"), ("pytest", "tests"), ("xdist", "parallel tests"),
                        ("pytest_timeout", "per-test timeout"), ("expecttest", "extras 'test'"),
                        ("PIL", "data"), ("matplotlib", "plots"), ("tqdm", "trainer"), ("numpy", "core"),
                        ("ninja", "parallel build")):
    try:
        mod = importlib.import_module(module)
        print(f"- {module}: {getattr(mod, '__version__', 'present')} ({purpose})")
    except Exception as exc:
        missing.append(module)
        print(f"- {module}: MISSING ({purpose}): {type(exc).__name__}")
print(f"- missing packages: {', '.join(missing) or 'none'}")
EOF
}

build_cuda() {
  rm -rf build frkd_kernels/_C*.so
  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 "$PY" setup.py build_ext --inplace
}

backends_check() {
  "$PY" - "$OUTDIR/backends.json" "$GPU" <<'EOF'
import json, sys
import frkd_kernels
status = frkd_kernels.backends(verbose=True)
print(json.dumps(status, indent=1))
open(sys.argv[1], "w").write(json.dumps(status, indent=1) + "\n")
wanted = ("triton", "cuda", "torch") if sys.argv[2] == "1" else ("cpu", "torch")
off = [name for name in wanted if not status[name].startswith("live")]
sys.exit(f"backends not live: {', '.join(off)}" if off else 0)
EOF
}

run_tests() {
  local parallel=()
  "$PY" -c "import xdist" 2>/dev/null && parallel=(-n 8)
  local timeout_flag=()
  "$PY" -c "import pytest_timeout" 2>/dev/null && timeout_flag=(--timeout 120)
  "$PY" -m pytest -q -p no:cacheprovider "${parallel[@]}" "${timeout_flag[@]}" -rfEs --durations=10 \
    --junitxml "$OUTDIR/tests.xml" tests
}

sanitize() {  # tool
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$1" --error-exitcode 99 \
    "$PY" scripts/gpu_sanitize_ops.py --device cuda --backends cuda --json "$OUTDIR/sanitize-$1.json"
}

ops_check() {
  if [ "$GPU" = 1 ]; then
    "$PY" scripts/gpu_sanitize_ops.py --device cuda --backends cuda triton --dtypes float32 bfloat16 \
      --json "$OUTDIR/ops.json"
  else
    "$PY" scripts/gpu_sanitize_ops.py --device cpu --backends cpu --json "$OUTDIR/ops.json"
  fi
}

bench_ops() {  # shape name
  local ops=(prototype_pool class_distance_maps masked_feature_mse teacher_entropy ifv frkd_loss)
  if [ "$GPU" = 1 ]; then
    "$PY" -m bench --device cuda --shapes "$1" --ops "${ops[@]}" \
      --out "$OUTDIR/bench-$1.json" --markdown "$OUTDIR/bench-$1.md"
  else  # every provider but compile (minutes of Inductor on a small CPU), one round
    "$PY" -m bench --device cpu --shapes tiny --ops "${ops[@]}" --providers cpu torch eager cirkd_loop \
      --warmup 0 --repeats 1 --out "$OUTDIR/bench-tiny.json" --markdown "$OUTDIR/bench-tiny.md"
  fi
}

bench_step_share() {
  if [ "$GPU" = 1 ]; then
    "$PY" -m bench --device cuda --ops step_share --shapes step-cs-b8 \
      --out "$OUTDIR/step-share.json" --markdown "$OUTDIR/step-share.md"
  else
    "$PY" -m bench --device cpu --ops step_share --shapes step-tiny --warmup 1 --repeats 1 \
      --out "$OUTDIR/step-share.json" --markdown "$OUTDIR/step-share.md"
  fi
}

TINY_TRAIN=(--teacher-iterations 2 --max-iterations 2 --val-per-iters 2 --save-per-iters 2 --log-per-iters 1
            --student-pretrained-base none --teacher-pretrained-base none)

main_job() {
  rm -rf "$OUTDIR/main-job"
  if [ "$GPU" = 1 ]; then
    "$PY" -m frkd.train --device cuda --out-dir "$OUTDIR/main-job"
  else
    "$PY" -m frkd.train --device cpu --out-dir "$OUTDIR/main-job" "${TINY_TRAIN[@]}"
  fi
}

torchrun_job() {
  local dir="$OUTDIR/torchrun" flags
  rm -rf "$dir"
  if [ "$GPU" = 1 ]; then
    flags=(--device cuda --teacher-iterations 20 --max-iterations 20 --val-per-iters 10 --save-per-iters 10
           --log-per-iters 5)
  else
    flags=(--device cpu "${TINY_TRAIN[@]}" --max-iterations 4)
  fi
  echo "== DDP probe: nccl + SyncBatchNorm (gloo, BatchNorm without a GPU), one rank =="
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 scripts/gpu_ddp_probe.py || return 1
  echo "== torchrun: first run, stopped at iteration 2 =="
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m frkd.train --out-dir "$dir" "${flags[@]}" \
    --stop-at-iteration 2 || return 1
  [ -f "$dir/last.pt" ] || { echo "torchrun: no $dir/last.pt after --stop-at-iteration"; return 1; }
  echo "== torchrun: resume =="
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m frkd.train --out-dir "$dir" "${flags[@]}" \
    --resume auto | tee "$OUTDIR/torchrun-resume.out" || return 1
  grep -q "resumed from .* at iteration 2" "$OUTDIR/torchrun-resume.out" || { echo "torchrun: no resume line"; return 1; }
}

export -f env_report build_cuda backends_check run_tests sanitize ops_check bench_ops bench_step_share main_job \
  torchrun_job
export OUTDIR REPO PY GPU
export TINY_TRAIN_FLAGS="${TINY_TRAIN[*]}"

# --- the run ---------------------------------------------------------------------------------------

step env 60 bash -c 'env_report >"$OUTDIR/env.md"; rc=$?; cat "$OUTDIR/env.md"; exit $rc'
if [ "$GPU" = 1 ]; then
  step build 150 bash -c build_cuda
else
  skip build "$NO_GPU: the CUDA build needs nvcc and a CUDA torch; the prebuilt CPU extension serves"
fi
step backends 60 bash -c backends_check

if [ "$GPU" = 1 ]; then
  step tests 120 bash -c run_tests &
  if command -v compute-sanitizer >/dev/null; then
    (step memcheck 100 bash -c 'sanitize memcheck'; step racecheck 100 bash -c 'sanitize racecheck') &
  else
    skip memcheck "compute-sanitizer not on PATH"
    skip racecheck "compute-sanitizer not on PATH"
  fi
  step ops 90 bash -c ops_check &
  step torchrun 150 bash -c 'TINY_TRAIN=($TINY_TRAIN_FLAGS); torchrun_job' &
  wait
else
  skip tests "$NO_GPU: CI runs the suite on the CPU"
  skip memcheck "$NO_GPU: compute-sanitizer needs a CUDA device"
  skip racecheck "$NO_GPU: compute-sanitizer needs a CUDA device"
  step ops 90 bash -c ops_check
  step torchrun 150 bash -c 'TINY_TRAIN=($TINY_TRAIN_FLAGS); torchrun_job'
fi

if [ "$GPU" = 1 ]; then
  step bench-cs 120 bash -c 'bench_ops cs-b8-c256'
else
  step bench-cs 90 bash -c 'bench_ops tiny'
fi
step step-share 75 bash -c bench_step_share
step main-job 120 bash -c 'TINY_TRAIN=($TINY_TRAIN_FLAGS); main_job'
if [ "$GPU" = 1 ]; then
  step bench-voc 120 bash -c 'bench_ops voc-b8-c256'
else
  skip bench-voc "$NO_GPU: the dry run's bench-cs covers the tiny set"
fi

# --- summary -----------------------------------------------------------------------------------------

"$PY" scripts/gpu_check_summary.py "$OUTDIR" --gpu "$GPU" --budget "$BUDGET" --started "$STARTED" \
  || echo "gpu_check: summary.md could not be written" >&2
[ -f "$OUTDIR/summary.md" ] && tail -n 1 "$OUTDIR/summary.md"
echo "[gpu_check] wrote $OUTDIR (summary.md, steps.tsv, *.log)"
! grep -q "	FAIL	" "$STEPS"
