"""The C++ CPU op's build and its internals: threading, the AVX2 copy against the scalar copy bit for bit, and
the safety of its inputs (out may not overlap them; the tables are read from private copies)."""

import sys

import pytest
import torch

import relpos
from relpos import backends

from conftest import SMALL, random_images, subset

pytestmark = pytest.mark.skipif(not backends.has_cpu_extension(), reason="needs the compiled extension relpos._C")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def test_build_has_openmp_where_torch_has_it():
    # Without OpenMP at::parallel_for silently runs on one thread; this catches a build that lost it.
    info = backends.build_info()
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        assert info["openmp"] != "off", info
    assert set(info) >= {"openmp", "simd_compiled", "simd_used", "cuda_archs"}
    assert info["simd_used"] in info["simd_compiled"].split(",")


def test_build_has_vector_copies_on_x86():
    info = backends.build_info()
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        assert info["simd_compiled"] == "avx512,avx2,scalar", info
        assert info["simd_used"] == ("avx512" if capability == "AVX512" else "avx2"), info


def _simd_copies():
    """The copies this CPU can run: scalar always, avx2 and avx512 where built and supported."""
    info = backends.build_info() or {}
    compiled, used = info.get("simd_compiled", "scalar").split(","), info.get("simd_used", "scalar")
    return [c for c in ("scalar", "avx2", "avx512") if c in compiled and compiled.index(c) >= compiled.index(used)]


def _run(images, plan, color, dtype, channels_last, simd):
    packed = relpos.pack_images(images)
    out = torch.full((plan.num_patches, 3, plan.patch_size, plan.patch_size), float("nan"), dtype=dtype)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    torch.ops.relpos.extract_patches_out_cpu_simd(packed.data, packed.meta, plan.patches, plan.seed, color, out, simd)
    assert not torch.isnan(out).any(), "an output element was left unwritten"
    return out


@pytest.mark.skipif(len(_simd_copies()) < 2, reason="only the scalar copy is built here")
@pytest.mark.parametrize("color", relpos.COLOR_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_vector_and_scalar_copies_agree_bit_for_bit(color, dtype, channels_last, generator):
    # Odd patch sizes put the noise planes at offsets that are not multiples of 4 (partial Philox blocks at both
    # ends) and leave vector tails; patch 1..3 has no full vector at all.
    for patch in (1, 3, int(torch.randint(4, 28, (), generator=generator))):
        images = random_images(generator, int(torch.randint(1, 4, (), generator=generator)), low=20, high=300)
        images += random_images(generator, 1, low=120, high=121)  # a square one: the plan is never empty
        config = relpos.PatchConfig(patch=patch, gap=patch // 2, jitter=1, min_pixels=60 * patch**2,
                                    max_pixels=200 * patch**2, downsample_area=(1, patch**2), downsample_prob=0.5)
        plan = relpos.sample_plan(relpos.pack_images(images).sizes, config, generator=generator)
        assert plan.num_patches > 0
        plan = subset(plan, torch.randperm(plan.num_patches, generator=generator)[:300])
        scalar = _run(images, plan, color, dtype, channels_last, "scalar")
        bits = torch.int16 if dtype != torch.float32 else torch.int32
        for copy in _simd_copies()[1:]:  # avx2, and avx512 where this CPU runs it
            assert torch.equal(scalar.view(bits), _run(images, plan, color, dtype, channels_last, copy).view(bits)), copy
        plan = subset(plan, slice(0, 2))  # and the scalar copy against the (slow) reference on a few
        scalar = _run(images, plan, color, dtype, channels_last, "scalar")
        expected = relpos.extract_patches(images, plan, color=color, backend="reference", dtype=dtype)
        torch.testing.assert_close(scalar.float(), expected.float(), atol=1e-2 if dtype != torch.float32 else 1e-4,
                                   rtol=1e-2 if dtype != torch.float32 else 1e-5)


def test_scalar_copy_at_default_geometry(generator):
    sizes = [(333, 517), (601, 450)]
    images = [torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8) for h, w in sizes]
    plan = relpos.sample_plan(sizes, relpos.PatchConfig(), generator=generator)
    plan = subset(plan, torch.randperm(plan.num_patches, generator=generator)[:64])
    results = [_run(images, plan, "drop", torch.bfloat16, False, simd) for simd in _simd_copies()]
    assert all(torch.equal(results[0].view(torch.int16), r.view(torch.int16)) for r in results)
    plan = subset(plan, slice(0, 6))
    results = [_run(images, plan, "drop", torch.bfloat16, False, "scalar")]
    expected = relpos.extract_patches(images, plan, color="drop", dtype=torch.bfloat16, backend="reference")
    torch.testing.assert_close(results[0].float(), expected.float(), atol=1e-2, rtol=1e-2)


def test_unknown_simd_is_rejected():
    images = random_images(torch.Generator().manual_seed(0), 1)
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, SMALL, seed=0)
    with pytest.raises(ValueError, match="simd must be"):
        _run(images, plan, "drop", torch.float32, False, "avx9")


def _packed_and_plan():
    images = random_images(torch.Generator().manual_seed(1), 2)
    packed = relpos.pack_images(images)
    plan = relpos.sample_plan(packed.sizes, SMALL, seed=3)
    assert plan.num_patches > 0
    return packed, plan


@pytest.mark.parametrize("target", ["data", "meta", "plan"])
def test_out_overlapping_an_input_is_rejected(target):
    # An out that aliases the plan would rewrite image indices while the op runs; out aliasing data or meta
    # would corrupt what is read. Each is refused up front, naming out, and the input is left as it was.
    packed, plan = _packed_and_plan()
    n, p = plan.num_patches, plan.patch_size
    count = n * 3 * p * p
    inputs = {"data": packed.data, "meta": packed.meta, "plan": plan.patches}
    # A float32 buffer large enough for out, whose first bytes are the target input's bytes.
    size = max(count * 4, inputs[target].numel() * inputs[target].element_size())
    backing = torch.zeros(size, dtype=torch.uint8)
    view = backing[: inputs[target].numel() * inputs[target].element_size()].view(inputs[target].dtype)
    view.copy_(inputs[target].reshape(-1))
    inputs[target] = view.view(inputs[target].shape)
    before = inputs[target].clone()
    out = backing[: count * 4].view(torch.float32).view(n, 3, p, p)
    with pytest.raises(ValueError, match="out shares memory with " + target):
        torch.ops.relpos.extract_patches_out(inputs["data"], inputs["meta"], inputs["plan"], plan.seed, "drop", out)
    assert torch.equal(inputs[target], before)


def test_out_overlapping_the_plan_through_the_public_api_is_rejected():
    packed, plan = _packed_and_plan()
    n, p = plan.num_patches, plan.patch_size
    backing = torch.zeros(n * 3 * p * p, dtype=torch.float32)
    patches = backing[: plan.patches.numel()].view(torch.int32).view(plan.patches.shape)
    patches.copy_(plan.patches)
    import dataclasses

    aliased = dataclasses.replace(plan, patches=patches)
    with pytest.raises(ValueError, match="out shares memory with plan"):
        relpos.extract_patches(packed, aliased, backend="cpu", out=backing.view(n, 3, p, p))


def test_adjacent_but_disjoint_out_is_accepted(generator):
    packed, plan = _packed_and_plan()
    n, p = plan.num_patches, plan.patch_size
    plan_bytes = plan.patches.numel() * 4
    backing = torch.empty(plan_bytes + n * 3 * p * p * 4, dtype=torch.uint8)
    patches = backing[:plan_bytes].view(torch.int32).view(plan.patches.shape)
    patches.copy_(plan.patches)
    out = backing[plan_bytes:].view(torch.float32).view(n, 3, p, p)
    torch.ops.relpos.extract_patches_out(packed.data, packed.meta, patches, plan.seed, "drop", out)
    assert torch.equal(out, relpos.extract_patches(packed, plan, backend="cpu"))
