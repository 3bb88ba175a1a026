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

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = PatchConfig()


@pytest.fixture(scope="module")
def batch():
    return make_inputs(1, 4, CONFIG, DEVICE, seed=0)[0]


def _available(backend):
    return backend in backends.fast_backends(DEVICE)


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_fused(benchmark, batch, backend):
    if not _available(backend):
        pytest.skip(f"backend {backend} not available on {DEVICE}")
    benchmark.group = "data step"
    out = benchmark(lambda: (extract_patches(batch["packed"], batch["plan"], backend=backend),
                             torch.cuda.synchronize() if DEVICE.type == "cuda" else None)[0])
    assert out.shape[0] == batch["plan"].num_patches


def test_baseline_numpy_pil(benchmark, batch):
    benchmark.group = "data step"
    out = benchmark(numpy_pil_pipeline, batch["numpy"], batch["plan"])
    assert out.shape[0] == batch["plan"].num_patches


@pytest.mark.skipif(not has_opencv(), reason="needs opencv-python-headless (the bench extra)")
def test_baseline_opencv(benchmark, batch):
    benchmark.group = "data step"
    out = benchmark(opencv_pipeline, batch["numpy"], batch["plan"])
    assert out.shape[0] == batch["plan"].num_patches
    # The right statistics: image channels centred, noise channels in [-0.5, 0.5) before scaling, RMS 50.
    assert abs(float((out.astype("float64") ** 2).mean()) - 2500) < 1


def test_baseline_per_sample_torch(benchmark, batch):
    benchmark.group = "data step"
    out = benchmark(per_sample_torch, batch["packed"], batch["plan"])
    assert out.shape[0] == batch["plan"].num_patches


def test_baseline_batched_torch(benchmark, batch):
    benchmark.group = "data step"
    out = benchmark(batched_torch, batch["packed"], batch["plan"])
    assert out.shape[0] == batch["plan"].num_patches
