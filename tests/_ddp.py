"""Worker of the DDP test (importable by spawned processes): a few SGD steps of a small fftbp
model under DistributedDataParallel with the gloo backend."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

import fftbp
from fftbp.torch import Conv2d

BATCH = 4


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        Conv2d(3, 6, 1, method="direct"),
        torch.nn.ReLU(),
        Conv2d(6, 6, 15, padding=7, groups=6, method="fft"),
        torch.nn.ReLU(),
        Conv2d(6, 2, 5, padding=2, method="fft"),
    ).double()


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 20, 20, generator=g, dtype=torch.float64)
    t = torch.randn(BATCH, 2, 20, 20, generator=g, dtype=torch.float64)
    return x, t


def train(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), t).backward()
        opt.step()


def worker(rank: int, world: int, port: int, out: str, steps: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    fftbp.set_fftw_effort("FFTW_ESTIMATE")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = make_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x, t = make_data()
        part = BATCH // world
        train(ddp, x[rank * part : (rank + 1) * part], t[rank * part : (rank + 1) * part], steps)
        if rank == 0:
            torch.save(model.state_dict(), out)
        dist.barrier()  # both ranks done communicating before either tears gloo down
    finally:
        dist.destroy_process_group()
