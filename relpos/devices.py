"""One reading of a `--device` option for every command: 'auto', 'cpu', 'cuda' or 'cuda:N'."""

from __future__ import annotations

import re

import torch

DEVICE_HELP = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


def check_device_text(text: str, option: str = "--device") -> str:
    """`text` if it names a device relpos can use, else a ValueError naming the option."""
    if not isinstance(text, str) or not _DEVICE.fullmatch(text):
        raise ValueError(f"{option} must be {DEVICE_HELP}, got {text!r}")
    return text


def resolve_device(text: str = "auto", local_rank: int = 0, option: str = "--device") -> torch.device:
    """The device `text` asks for: 'auto' is this process's GPU (LOCAL_RANK under torchrun) when torch sees one."""
    check_device_text(text, option)
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{option} {text} was asked for but torch sees no CUDA device; use {option} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
