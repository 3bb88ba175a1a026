"""Which implementations of the fused op are present, and why not when one is missing."""

from __future__ import annotations

import functools
import importlib
import os

import torch

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


@functools.cache
def extension_error() -> str | None:
    """None when the compiled extension relpos._C loaded, else the reason it did not."""
    try:
        importlib.import_module("relpos._C")
    except ImportError as error:  # not built, or built against another torch
        return f"{error}. Rebuild with: pip install --no-build-isolation -e ."
    return None


def has_cpu_extension() -> bool:
    return extension_error() is None


def build_info() -> dict[str, str] | None:
    """How relpos._C was built, or None without it: `openmp` (the OpenMP version, or "off": then the CPU op runs
    on one thread), `simd_compiled` (kernel copies in the build, e.g. "avx2,scalar"), `simd_used` (the copy this
    CPU runs), `cuda_archs` (","-separated TORCH_CUDA_ARCH_LIST entries of the CUDA part; empty without CUDA)."""
    if not has_cpu_extension():
        return None
    pairs = (item.split("=", 1) for item in torch.ops.relpos.build_info().split(";"))
    return {key: value for key, value in pairs}


def has_cuda_extension() -> bool:
    return has_cpu_extension() and torch._C._dispatch_has_kernel_for_dispatch_key("relpos::extract_patches_out", "CUDA")


def _parse_archs(text: str) -> list[tuple[int, int, bool]] | None:
    """TORCH_CUDA_ARCH_LIST entries ("8.0;9.0;9.0+PTX") as (major, minor, has_ptx); None when not numeric."""
    parsed = []
    for entry in text.replace(" ", ";").split(";"):
        if not entry:
            continue
        version, _, ptx = entry.partition("+")
        major, _, minor = version.partition(".")
        minor = "".join(ch for ch in minor if ch.isdigit())  # 9.0a -> 9.0
        if not (major.isdigit() and minor.isdigit()):
            return None  # a named family ("Ampere"): cannot judge here, let the driver decide
        parsed.append((int(major), int(minor), ptx.upper() == "PTX"))
    return parsed


def cuda_unsupported_reason(device: torch.device) -> str | None:
    """Why the compiled CUDA kernel cannot run on `device`, or None when it can.

    Asks the extension which architectures it was built for (so a TORCH_CUDA_ARCH_LIST build is honoured): a GPU
    runs machine code built for its own major version and an equal or lower minor, or PTX for an equal or lower
    version, which the driver compiles."""
    info = build_info() or {}
    archs = _parse_archs(info.get("cuda_archs", ""))
    if not archs:
        return None
    major, minor = tuple(torch.cuda.get_device_capability(device))
    runs = any((a_major == major and a_minor <= minor) or (ptx and (a_major, a_minor) <= (major, minor))
               for a_major, a_minor, ptx in archs)
    if runs:
        return None
    return (f"the CUDA kernel was built for compute capabilities {info['cuda_archs']} and this GPU is {major}.{minor}; "
            f"rebuild with TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\" pip install --no-build-isolation -e .")


@functools.cache
def triton_error() -> str | None:
    """None when the Triton op is registered, else the reason it is not."""
    try:
        importlib.import_module("relpos.triton_op")
    except ImportError as error:
        return f"triton is not usable here ({error}); pip install triton"
    return None


def triton_runs_on(device: torch.device) -> bool:
    """Triton kernels run on CUDA devices, and on CPU tensors only under its interpreter (TRITON_INTERPRET=1)."""
    if triton_error() is not None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _warn_fallback_to(backend: str, reason: str) -> None:
    import warnings

    what = "the slow pure-PyTorch reference backend" if backend == "reference" else f"the {backend} backend"
    warnings.warn(f"relpos: falling back to {what}: {reason}", RuntimeWarning, stacklevel=3)


@torch.compiler.assume_constant_result  # decided once at trace time: it imports and probes, nothing to trace
def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend for `backend` on `device`, or a ValueError/RuntimeError saying what to do."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"images must be on the CPU or a CUDA device, got {device}")
    if backend == "auto":
        if device.type == "cuda":
            fallback = "triton" if triton_runs_on(device) else "reference"
            if has_cuda_extension():
                unsupported = cuda_unsupported_reason(device)
                if unsupported is None:
                    return "cuda"
                _warn_fallback_to(fallback, unsupported)
            elif fallback == "reference":
                _warn_fallback_to(fallback, f"neither the CUDA extension nor Triton is usable ({triton_error()})")
            return fallback
        if has_cpu_extension():
            return "cpu"
        _warn_fallback_to("reference", extension_error())
        return "reference"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs images on the CPU, got {device}; use backend='auto'")
        if not has_cpu_extension():
            raise RuntimeError(f"backend='cpu' needs the compiled extension relpos._C: {extension_error()}")
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs images on a CUDA device, got {device}")
        if not has_cuda_extension():
            raise RuntimeError(
                "backend='cuda' needs relpos._C built with CUDA (a CUDA build of torch and nvcc at install time; "
                "force it with RELPOS_USE_CUDA=1). backend='triton' or 'auto' works without it."
            )
        unsupported = cuda_unsupported_reason(device)
        if unsupported:
            raise RuntimeError(f"backend='cuda': {unsupported}; backend='auto' falls back to Triton")
    if backend == "triton" and not triton_runs_on(device):
        reason = triton_error() or f"Triton runs on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 (got {device})"
        raise RuntimeError(f"backend='triton' is not available: {reason}")
    return backend


def fast_backends(device: torch.device) -> tuple[str, ...]:
    """The compiled backends that run on `device` at speed: what benchmarks time (the Triton interpreter on CPU
    tensors is a correctness tool, not a speed one, so it is left out)."""
    usable = []
    for backend in ("cpu", "cuda", "triton"):
        try:
            resolve(backend, device)
        except (ValueError, RuntimeError):
            continue
        if not (backend == "triton" and device.type == "cpu"):
            usable.append(backend)
    return tuple(usable)
