"""Triton vs C++ bit for bit on the geometry the tiled kernel makes fragile: down sizes at both ends of the range,
patches flush with image edges, images barely larger than the patch, one-patch plans, patch sizes that are not
a multiple of the tile (crop and down-sampled patches are separate specialisations with their own tiles)."""

import pytest
import torch

import relpos
from relpos import backends

pytestmark = pytest.mark.skipif(not backends.triton_runs_on(torch.device("cpu")), reason="needs Triton's interpreter")


def _image(generator, h, w):
    return torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8)


def _plan(rows, sizes, patch, seed):
    return relpos.Plan(patches=torch.tensor(rows, dtype=torch.int32).reshape(-1, 7),
                       pairs=torch.zeros((0, 2), dtype=torch.int64), labels=torch.zeros((0,), dtype=torch.int64),
                       seed=seed, patch_size=patch, image_sizes=torch.tensor(sizes, dtype=torch.int64))


def _agree(images, plan, color, channels_last=False, dtype=torch.float32):
    packed = relpos.pack_images(images)
    shape = (plan.num_patches, 3, plan.patch_size, plan.patch_size)
    outs = []
    for backend in ("cpu", "triton"):
        out = torch.full(shape, float("nan"), dtype=dtype)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        outs.append(relpos.extract_patches(packed, plan, color=color, backend=backend, out=out))
    cpp, tri = outs
    assert not torch.isnan(tri).any(), "an output element was left unwritten (NaN poison survived)"
    assert torch.equal(cpp, tri)


# one patch each (96-px down-sampled patches are slow in the interpreter): flush with the top-left, then the
# bottom-right corner of the resized image
@pytest.mark.parametrize("down,color,corner", [(10, "project", (0, 0)), (95, "none", (140 - 96, 160 - 96))])
def test_down_sizes_at_both_ends_for_patch_96(down, color, corner, generator):
    image = _image(generator, 130, 150)
    rows = [[0, 140, 160, *corner, 1, down]]
    _agree([image], _plan(rows, [[130, 150]], 96, int(generator.seed()) % 2**62), color)


@pytest.mark.parametrize("patch", [5, 17, 33, 40])
def test_patch_sizes_not_a_multiple_of_the_tile(patch, generator):
    h, w = patch + 1, patch + 2  # images barely larger than the patch, resized to exactly the patch or up
    image = _image(generator, h, w)
    rows = [[0, h, w, 1, 2, 0, 0], [0, patch, patch, 0, 0, 1, 0], [0, 2 * patch, 2 * patch + 3, patch, patch + 3, 2,
                                                                   max(1, patch // 3)],
            [0, h, w, 0, 0, 0, patch - 1]]
    color = relpos.COLOR_MODES[patch % 3]
    _agree([image], _plan(rows, [[h, w]], patch, 12345 + patch), color, channels_last=patch % 2 == 1)


@pytest.mark.parametrize("down", [0, 3])
def test_single_patch_plan(down, generator):
    image = _image(generator, 23, 19)
    for color in relpos.COLOR_MODES:
        _agree([image], _plan([[0, 23, 19, 3, 2, 1, down]], [[23, 19]], 12, 7), color, dtype=torch.bfloat16)
