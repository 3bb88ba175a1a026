"""What every raw op shares, whichever backend implements it: output allocation, the device rule, and the fake
kernels of the compiled ops. A leaf module (torch only), so the op registrations (relpos/triton_op.py, the
extension) and the public face (relpos/ops.py) all depend on it and not on each other."""

from __future__ import annotations

import torch


def empty_patches(num_patches: int, patch_size: int, dtype: torch.dtype, channels_last: bool, device) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((num_patches, 3, patch_size, patch_size), dtype=dtype, device=device, memory_format=memory_format)


def check_op_devices(data: torch.Tensor, meta: torch.Tensor, plan: torch.Tensor, out: torch.Tensor | None = None):
    """The raw ops' device rule, also enforced by their fake kernels: a `meta`-device table would otherwise route
    the call to the fake kernel and hand back uninitialised memory with no error."""
    tables_ok = all(t.device == data.device or t.device.type == "cpu" for t in (meta, plan))
    if not tables_ok or (out is not None and out.device != data.device):
        where = f"data {data.device}, meta {meta.device}, plan {plan.device}" + (f", out {out.device}" if out is not None else "")
        raise ValueError(f"relpos op: mixed devices ({where}); meta and plan must be on data's device or the CPU, "
                         "out on data's device")


def register_compiled_fakes() -> None:
    """Fake (meta) kernels of the compiled ops: shapes only, so torch.compile(fullgraph=True) traces through the
    C++/CUDA ops. Call once the extension is loaded."""

    @torch.library.register_fake("relpos::extract_patches")
    def _extract_patches_fake(data, meta, plan, seed, color, patch_size, dtype, channels_last):
        check_op_devices(data, meta, plan)
        return empty_patches(plan.shape[0], patch_size, dtype, channels_last, data.device)

    @torch.library.register_fake("relpos::extract_patches_out")
    def _extract_patches_out_fake(data, meta, plan, seed, color, out):
        check_op_devices(data, meta, plan, out)
        return None
