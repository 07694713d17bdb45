"""Probe of the multi-GPU path on any number of GPUs: start it with
``python -m torch.distributed.run --standalone --nproc_per_node=N scripts/gpu_ddp_probe.py``.

Joins an nccl process group (gloo without CUDA), converts a small DeepLabV3-ResNet18 to
SyncBatchNorm as the trainer does, wraps it in DDP, runs two SGD steps and checks that the
gradients and the all-reduce agree over the ranks. With one rank the SyncBatchNorm layers take
their single-process path (PyTorch syncs only when the world size is above 1), so one GPU checks
the nccl group, the conversion and DDP, not the statistics exchange. Exit status 0 when all holds.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from frkd.models import build_model  # noqa: E402


def main() -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", **({"device_id": device} if cuda else {}))
    torch.manual_seed(0)
    model = build_model("deeplabv3", "resnet18", 5, width=8)
    if cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device).train()
    syncbn = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    ddp = DistributedDataParallel(model, device_ids=[device] if cuda else None)
    sgd = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    for _ in range(2):
        images = torch.randn(2, 3, 64, 64, generator=g).to(device)
        out = ddp(images)
        loss = out.logits.square().mean() + out.aux.square().mean()
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
    grad = next(p for p in model.parameters() if p.grad is not None).grad.flatten()[:8].clone()
    gathered = [torch.empty_like(grad) for _ in range(world)]
    dist.all_gather(gathered, grad)
    same_grads = all(torch.equal(gathered[0], g) for g in gathered)
    total = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(total)
    ok = same_grads and total.item() == world * (world + 1) / 2 and bool(torch.isfinite(loss))
    if rank == 0:
        print(f"ddp probe: backend {dist.get_backend()}, world {world}, {syncbn} SyncBatchNorm layers, "
              f"loss {loss.item():.4f}, gradients equal over ranks: {same_grads}, all_reduce ok: "
              f"{total.item() == world * (world + 1) / 2}; {'PASS' if ok else 'FAIL'}", flush=True)
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
