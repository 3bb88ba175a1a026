"""pytest-benchmark suite of the data step: every backend and baseline on the same inputs, side by side.

    python -m pytest benchmarks                       # timings (compare with --benchmark-compare)
    python -m pytest benchmarks --benchmark-disable   # quick check that every case still runs (CI)
"""

import pytest
import torch

from relpos import backends, extract_patches
from relpos.baselines import batched_torch, has_opencv, numpy_pil_pipeline, opencv_pipeline, per_sample_torch
from relpos.bench import make_inputs
from relpos.config import PatchConfig
from relpos.plan import CHANNEL

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = PatchConfig()


@pytest.fixture(scope="module")
def batch():
    return make_inputs(1, 4, CONFIG, DEVICE, seed=0)[0]


def _available(backend):
    return backend in backends.fast_backends(DEVICE)


def _check_statistics(out, batch):
    """A baseline follows the reference's steps, not its arithmetic (PIL rounds to uint8, F.interpolate its
    positions), so it is checked patch by patch for what those steps fix: the kept channel is the same picture as
    the reference's (correlation), centred; the other two are uniform noise; every patch has an RMS of 50."""
    out = torch.as_tensor(out).double().cpu()
    plan = batch["plan"]
    assert out.shape == (plan.num_patches, 3, plan.patch_size, plan.patch_size) and torch.isfinite(out).all()
    reference = extract_patches(batch["packed"], plan, backend="reference").double().cpu()
    n = torch.arange(plan.num_patches)
    kept = plan.patches[:, CHANNEL].long()
    mine, theirs = out[n, kept].flatten(1), reference[n, kept].flatten(1)
    mine_c, theirs_c = mine - mine.mean(1, keepdim=True), theirs - theirs.mean(1, keepdim=True)
    correlation = (mine_c * theirs_c).sum(1) / (mine_c.norm(dim=1) * theirs_c.norm(dim=1))
    assert correlation.min() > 0.95, f"a patch's kept channel is not the reference's picture ({correlation.min():.3f})"
    assert mine.mean(1).abs().max() < 1e-2  # centred
    assert torch.allclose(out.pow(2).mean(dim=(1, 2, 3)).sqrt(), torch.full((plan.num_patches,), 50.0, dtype=out.dtype),
                          rtol=1e-4)
    dropped = torch.ones_like(out[:, :, 0, 0], dtype=torch.bool)
    dropped[n, kept] = False
    noise = out[dropped].reshape(plan.num_patches, 2, -1)  # [patch, its two dropped channels, values]
    their_noise = reference[dropped].reshape(plan.num_patches, 2, -1)
    # uniform on [-s/2, s/2): standard deviation s / sqrt(12), so std / max|value| is 1 / sqrt(3) ~ 0.577
    ratio = noise.std(2) / noise.abs().amax(2)
    assert ((ratio > 0.54) & (ratio < 0.62)).all(), "the dropped channels are not uniform noise"
    assert (noise[:, 0] != noise[:, 1]).any(1).all(), "a patch's two dropped channels hold the same values"
    # and of the right size: against the kept channel, as large as the reference's noise is against its own
    # (both kept channels are the same picture, each times its patch's scale s; the noise's extremes are ~s / 2)
    size = (noise.abs().amax(2) / their_noise.abs().amax(2)) / (mine.norm(dim=1) / theirs.norm(dim=1))[:, None]
    assert ((size - 1).abs() < 0.1).all(), f"the noise is not on [-0.5, 0.5) before scaling ({size.min():.3f}, " \
                                           f"{size.max():.3f})"


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_fused(benchmark, batch, backend):
    if not _available(backend):
        pytest.skip(f"backend {backend} not available on {DEVICE}")
    benchmark.group = "data step"
    out = benchmark(lambda: (extract_patches(batch["packed"], batch["plan"], backend=backend),
                             torch.cuda.synchronize() if DEVICE.type == "cuda" else None)[0])
    _check_statistics(out, batch)  # bit for bit against the reference: tests/test_backends.py


def test_baseline_numpy_pil(benchmark, batch):
    benchmark.group = "data step"
    _check_statistics(benchmark(numpy_pil_pipeline, batch["numpy"], batch["plan"]), batch)


@pytest.mark.skipif(not has_opencv(), reason="needs opencv-python-headless (the bench extra)")
def test_baseline_opencv(benchmark, batch):
    benchmark.group = "data step"
    _check_statistics(benchmark(opencv_pipeline, batch["numpy"], batch["plan"]), batch)


def test_baseline_per_sample_torch(benchmark, batch):
    benchmark.group = "data step"
    _check_statistics(benchmark(per_sample_torch, batch["packed"], batch["plan"]), batch)


def test_baseline_batched_torch(benchmark, batch):
    benchmark.group = "data step"
    _check_statistics(benchmark(batched_torch, batch["packed"], batch["plan"]), batch)
