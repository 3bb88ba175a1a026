"""Plan rows checked where they live, without a host synchronisation.

A plan on the CPU is checked value by value before any launch (`check_plan_rows` here; the C++ ops check their
own). A plan that lives on a GPU cannot be read without stalling the stream, so the kernels check each row as they
read it (the Triton kernel's `_plan_row`, the CUDA kernel's `plan_row_in_range` in csrc/relpos_math.h, the same
rule as `bad_plan_rows`): a row out of range for the batch is rendered from a safe placeholder (image 0 resized to
the patch itself: every read stays inside image 0) and the device's error flag is raised, so no kernel reads out
of bounds and no separate guard pass is launched. `raise_on_plan_errors` (called by the training loop where it
synchronises anyway) turns the flag into an error. When the compiled extension is built, every backend shares its
flag, so one `raise_on_plan_errors` covers them all.
"""

from __future__ import annotations

import importlib

import torch

from .images import MAX_SIDE
from .plan import CHANNEL, DOWN, HEIGHT, IMAGE, LEFT, TOP, WIDTH

_error_flags: dict[torch.device, torch.Tensor] = {}


def bad_plan_rows(plan: torch.Tensor, num_images: int, patch_size: int) -> torch.Tensor:
    """bool [N]: rows that name a missing image or a patch outside its resized image (no host sync)."""
    p = plan.to(torch.int64)
    return ((p[:, IMAGE] < 0) | (p[:, IMAGE] >= num_images) | (p[:, TOP] < 0) | (p[:, LEFT] < 0)
            | (p[:, HEIGHT] > MAX_SIDE) | (p[:, WIDTH] > MAX_SIDE)
            | (p[:, TOP] + patch_size > p[:, HEIGHT]) | (p[:, LEFT] + patch_size > p[:, WIDTH])
            | (p[:, CHANNEL] < 0) | (p[:, CHANNEL] > 2) | (p[:, DOWN] < 0) | (p[:, DOWN] > patch_size))


def check_plan_rows(plan: torch.Tensor, num_images: int, patch_size: int) -> None:
    """Raise, naming the first one, if a CPU plan has rows out of range for the batch (free on the CPU)."""
    bad = bad_plan_rows(plan, num_images, patch_size)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(f"plan row {row} is out of range for this batch of {num_images} images (patch size "
                         f"{patch_size}): {plan[row].tolist()}")


def _device_key(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def plan_error_flag(device: torch.device | str) -> torch.Tensor:
    """The int32 scalar flag that kernels raise on `device` (the Triton kernel takes it as a pointer)."""
    return _error_flag(_device_key(device))


def _error_flag(device: torch.device) -> torch.Tensor:
    """The device's flag: the compiled extension's when it is built (its CUDA op raises that one), else our own."""
    flag = _error_flags.get(device)
    if flag is None:
        try:
            importlib.import_module("relpos._C")
            flag = torch.ops.relpos.plan_error_flag(device)
        except (ImportError, AttributeError, RuntimeError):  # no extension, or one built before the guard existed
            flag = torch.zeros((), dtype=torch.int32, device=device)
        _error_flags[device] = flag
    return flag


def raise_on_plan_errors(device: torch.device | str | None = None) -> None:
    """Raise (once) if a kernel on `device` (every device when None) met plan rows out of range."""
    if device is not None:
        _error_flag(_device_key(device))  # fetch the extension's flag even if only its CUDA op raised it
    for flag_device, flag in list(_error_flags.items()):
        if device is not None and flag_device != _device_key(device):
            continue
        if int(flag.item()):  # the one host read, made where the caller can afford it
            flag.zero_()
            raise ValueError(f"a plan on {flag_device} had rows out of range for its batch (a missing image or a "
                             "patch outside its resized image); those patches were rendered from a placeholder. "
                             "Draw the plan with relpos.sample_plan(images.sizes) for this batch.")
