"""Every fast backend against the reference on fresh random images and plans, outputs poisoned first.

C++ CPU: many cases. Triton: fewer patches per case on the CPU, where it runs in Triton's interpreter.
CUDA (C++ and Triton on the GPU): the same cases, skipped where no GPU is present.
"""

import dataclasses

import pytest
import torch

import relpos
from relpos import backends

from conftest import SMALL, random_images, subset

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _cases():
    cases = [("cpu", "cpu")]
    if backends.triton_runs_on(torch.device("cpu")):
        cases.append(("cpu", "triton"))
    if torch.cuda.is_available():
        cases += [("cuda", "triton")] + ([("cuda", "cuda")] if backends.has_cuda_extension() else [])
    return cases


BACKENDS = pytest.mark.parametrize("device,backend", _cases(), ids=lambda v: str(v))


def _interpreted(device, backend):
    return backend == "triton" and device == "cpu"


def _render(images, plan, backend, device, color, dtype, channels_last):
    packed = relpos.pack_images([image.to(device) for image in images])
    shape = (plan.num_patches, 3, plan.patch_size, plan.patch_size)
    out = torch.full(shape, float("nan"), dtype=dtype, device=device)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    result = relpos.extract_patches(packed, plan, color=color, backend=backend, out=out)
    assert result.data_ptr() == out.data_ptr()
    return result


def _assert_matches(actual, expected):
    assert not torch.isnan(actual).any(), "an output element was left unwritten (NaN poison survived)"
    assert torch.isfinite(actual).all()
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual.cpu(), expected, atol=1e-4, rtol=1e-5)
    else:  # one rounding of the same float32 value; allow one unit in the last place
        torch.testing.assert_close(actual.cpu().float(), expected.to(actual.dtype).float(), atol=1e-2, rtol=1e-2)


@BACKENDS
@pytest.mark.parametrize("color", relpos.COLOR_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_matches_reference(device, backend, color, dtype, channels_last, generator):
    count = int(torch.randint(1, 5, (), generator=generator))
    images = random_images(generator, count)
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, SMALL, generator=generator)
    if _interpreted(device, backend):  # a handful of patches, half of them downsampled
        rows = torch.randperm(plan.num_patches, generator=generator)[:3]
        plan = subset(plan, rows)
    expected = relpos.extract_patches(images, plan, color=color, backend="reference")
    actual = _render(images, plan, backend, device, color, dtype, channels_last)
    assert actual.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    _assert_matches(actual, expected)


@BACKENDS
def test_matches_reference_at_paper_geometry(device, backend, generator):
    # Default geometry (96-px patches, 150K-450K-pixel resize) from ragged images of odd sizes.
    sizes = [(333, 517), (601, 450)]
    images = [torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8) for h, w in sizes]
    plan = relpos.sample_plan(sizes, relpos.PatchConfig(), generator=generator)
    rows = torch.randperm(plan.num_patches, generator=generator)[: 2 if _interpreted(device, backend) else 24]
    plan = subset(plan, rows)
    plan.patches[0, relpos.plan.DOWN] = 17  # at least one patch takes the down/up-sampling path
    expected = relpos.extract_patches(images, plan, color="drop", backend="reference")
    _assert_matches(_render(images, plan, backend, device, "drop", torch.float32, False), expected)


@pytest.mark.parametrize("batch", range(1, 9))
def test_cpu_op_many_random_batches(batch, generator):
    images = random_images(generator, batch, low=20, high=300)
    patch = int(torch.randint(5, 20, (), generator=generator))
    config = dataclasses.replace(SMALL, patch=patch, downsample_area=(1, patch**2))
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, config, generator=generator)
    color = relpos.COLOR_MODES[batch % 3]
    expected = relpos.extract_patches(images, plan, color=color, backend="reference")
    _assert_matches(_render(images, plan, "cpu", "cpu", color, torch.float32, batch % 2 == 0), expected)


def test_cpu_op_is_deterministic_and_thread_count_independent(generator):
    images = random_images(generator, 4)
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, SMALL, generator=generator)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = relpos.extract_patches(images, plan, backend="cpu")
        torch.set_num_threads(max(2, threads))
        many = relpos.extract_patches(images, plan, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    reseeded = relpos.extract_patches(images, dataclasses.replace(plan, seed=plan.seed + 1), backend="cpu")
    assert not torch.equal(one, reseeded)  # the noise is keyed by the seed


def test_packed_and_list_inputs_agree(generator):
    images = random_images(generator, 3)
    packed = relpos.pack_images(images)
    plan = relpos.sample_plan(packed.sizes, SMALL, generator=generator)
    assert torch.equal(relpos.extract_patches(images, plan), relpos.extract_patches(packed, plan))


def test_empty_plan_gives_empty_output():
    plan = relpos.sample_plan([[4, 500]], SMALL, seed=0)  # too thin for a pair at any scale
    assert plan.num_patches == 0
    out = relpos.extract_patches([torch.zeros((4, 500, 3), dtype=torch.uint8)], plan)
    assert out.shape == (0, 3, SMALL.patch, SMALL.patch)


@pytest.mark.skipif(not backends.triton_runs_on(torch.device("cpu")), reason="needs Triton's interpreter")
@pytest.mark.parametrize("color", relpos.COLOR_MODES)
def test_triton_and_cpp_agree_bit_for_bit(color, generator):
    # Same taps, same blend order, no FMA, float64 sums: the two compiled backends give identical bytes.
    images = random_images(generator, 2)
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, SMALL, generator=generator)
    plan = subset(plan, torch.randperm(plan.num_patches, generator=generator)[:3])
    plan.patches[0, relpos.plan.DOWN] = 5
    cpp = relpos.extract_patches(images, plan, color=color, backend="cpu")
    tri = relpos.extract_patches(images, plan, color=color, backend="triton")
    assert torch.equal(cpp, tri)


def test_fast_backends_are_the_compiled_ones_that_run_here():
    """What benchmarks time: the C++ op on the CPU (not the Triton interpreter, not the reference)."""
    cpu = backends.fast_backends(torch.device("cpu"))
    assert cpu == (("cpu",) if backends.has_cpu_extension() else ())
