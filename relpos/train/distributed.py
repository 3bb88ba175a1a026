"""DDP helpers: join the process group torchrun describes, check that every rank ends with the same weights, leave."""

from __future__ import annotations

import hashlib
import logging
import os

import torch

log = logging.getLogger("relpos.train")


def torchrun_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def process_group_backend(device: torch.device) -> str:
    """NCCL for ranks that train on GPUs, gloo for CPU ranks, also on a machine that has a GPU: NCCL cannot
    all-reduce CPU tensors ("No backend type associated with device type cpu", seen on an H100 with --device cpu)."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes, with the backend for the device this rank trains on."""
    if torchrun_ranks()[1] > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(process_group_backend(device))


def unwrap(model):
    """The plain module under torch.compile and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def weights_digest(model) -> str:
    """SHA-256 of every parameter, in order: equal digests mean bit-identical weights.

    Buffers (BatchNorm running statistics) are left out: under DDP each rank updates them from its own
    batch after the last broadcast, and the checkpoint keeps rank 0's, as DDP does.
    """
    digest = hashlib.sha256()
    for name, tensor in unwrap(model).named_parameters():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ranks_agree(model) -> bool:
    """Whether every DDP rank ends with the same weights (they must: same init, all-reduced gradients)."""
    digests = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(digests, weights_digest(model))
    agree = len(set(digests)) == 1
    if not agree:
        log.error("DDP ranks disagree on the weights: %s", digests)
    return agree


def finish_distributed(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
