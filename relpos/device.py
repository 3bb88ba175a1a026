"""Which torch device a command runs on: one rule for `relpos train` and `relpos eval`."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: this process's GPU (LOCAL_RANK under torchrun) when torch sees one, else the CPU; otherwise the
    named device, refused with a clear message when it is a GPU that torch cannot see."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} was asked for but torch sees no CUDA device; use --device cpu")
        return device
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
