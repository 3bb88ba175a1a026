"""The ops trace under torch.compile(fullgraph=True) through their fake kernels, and agree with eager."""

import pytest
import torch

import relpos
from relpos import backends

from conftest import SMALL, random_images, subset


def _batch(generator, rows=None):
    images = random_images(generator, 3)
    packed = relpos.pack_images(images)
    plan = relpos.sample_plan(packed.sizes, SMALL, generator=generator)
    return packed, (plan if rows is None else subset(plan, slice(0, rows)))


def test_cpu_op_compiles_fullgraph(generator):
    packed, plan = _batch(generator)

    def step(data, meta, patches):
        x = torch.ops.relpos.extract_patches(data, meta, patches, plan.seed, "drop", plan.patch_size, torch.float32, True)
        return (x * x).mean(dim=(1, 2, 3)), x.amax()

    compiled = torch.compile(step, fullgraph=True)
    eager = step(packed.data, packed.meta, plan.patches)
    traced = compiled(packed.data, packed.meta, plan.patches)
    torch.testing.assert_close(traced, eager)
    torch.testing.assert_close(traced[0], torch.full_like(traced[0], 2500.0), rtol=1e-4, atol=0)


@pytest.mark.skipif(not backends.triton_runs_on(torch.device("cpu")) and not torch.cuda.is_available(),
                    reason="triton unavailable")
def test_triton_op_compiles_fullgraph(generator):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    packed, plan = _batch(generator, rows=3)
    data = packed.data.to(device)

    def step(data, meta, patches):
        x = torch.ops.relpos.extract_patches_triton(data, meta, patches, plan.seed, "project", plan.patch_size,
                                                    torch.float32, False)
        return x.sum(dim=1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(data, packed.meta, plan.patches), step(data, packed.meta, plan.patches))


def test_fake_kernel_gives_shape_dtype_and_layout(generator):
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed, plan = _batch(generator)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = torch.ops.relpos.extract_patches(packed.data, packed.meta, plan.patches, 0, "drop", 12, torch.bfloat16, True)
    assert out.shape == (plan.num_patches, 3, 12, 12) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
