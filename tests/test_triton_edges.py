"""Triton vs C++ bit for bit on the geometry the tiled kernel makes fragile: down sizes at both ends of the range,
patches flush with image edges, images barely larger than the patch, one-patch plans, patch sizes that are not
a multiple of the tile (crop and down-sampled patches are separate specialisations with their own tiles)."""

import pytest
import torch

import relpos
from relpos import backends

pytestmark = pytest.mark.skipif(not backends.triton_runs_on(torch.device("cpu")), reason="needs Triton's interpreter")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
_philox = pytest.importorskip("relpos.kernels.extract_patches")._philox
_store_table = pytest.importorskip("relpos.kernels.extract_patches")._store_table


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


# ---- what the staged kernel (per-program scratch, phases, a fixed grid walking the plan) makes fragile


@pytest.mark.parametrize("color", relpos.COLOR_MODES)
@pytest.mark.parametrize("down", [10, 95])
def test_every_colour_at_both_ends_of_the_down_range(color, down, generator):
    # both down-sampled patches of a program share its scratch: the second must not see the first's stale values
    image = _image(generator, 150, 131)
    rows = [[0, 150, 131, 150 - 96, 131 - 96, int(generator.seed()) % 3, down],
            [0, 160, 140, 0, 0, 2, 105 - down]]
    _agree([image], _plan(rows, [[150, 131]], 96, int(generator.seed()) % 2**62), color, dtype=torch.bfloat16)


@pytest.mark.parametrize("color", relpos.COLOR_MODES)
def test_crops_flush_with_every_edge_of_up_and_down_scaled_images(color, generator):
    patch = 24
    image = _image(generator, 41, 37)
    rows = []
    for rh, rw in [(41, 37), (patch, patch), (60, 90), (patch + 1, 200)]:  # unscaled, exact, up, mixed
        for top, left in [(0, 0), (rh - patch, rw - patch), (0, rw - patch), (rh - patch, 0)]:
            rows.append([0, rh, rw, top, left, len(rows) % 3, 0])
    _agree([image], _plan(rows, [[41, 37]], patch, 99), color, channels_last=color == "drop")


def _random_rows(generator, count, sizes, patch):
    rows = []
    for _ in range(count):
        image = int(torch.randint(0, len(sizes), (), generator=generator))
        h, w = sizes[image]
        scale = 0.5 + 1.5 * float(torch.rand((), generator=generator))
        rh, rw = max(patch, int(h * scale)), max(patch, int(w * scale))
        top = int(torch.randint(0, rh - patch + 1, (), generator=generator))
        left = int(torch.randint(0, rw - patch + 1, (), generator=generator))
        down = int(torch.randint(1, patch, (), generator=generator)) if torch.rand((), generator=generator) < 0.4 else 0
        rows.append([image, rh, rw, top, left, int(torch.randint(0, 3, (), generator=generator)), down])
    return rows


def test_a_plan_of_thousands_of_patches(generator):
    # each of the few interpreter programs walks hundreds of patches, crop and down-sampled interleaved; colour
    # drop (the kept channel in one plane, noise in the others) is the most stateful case (~1 min interpreted)
    sizes = [(9, 11), (14, 8), (7, 7)]
    images = [_image(generator, h, w) for h, w in sizes]
    rows = _random_rows(generator, 2000, sizes, 6)
    _agree(images, _plan(rows, sizes, 6, int(generator.seed()) % 2**62), "drop", channels_last=True)


@pytest.mark.parametrize("programs", [1, 3, 64])
def test_the_result_does_not_depend_on_the_grid(programs, generator, monkeypatch):
    # the launcher sizes the scratch by the grid; one program walking the whole plan or one per patch agree
    from relpos.kernels import extract_patches as kernel

    monkeypatch.setattr(kernel, "INTERPRETER_PROGRAMS", programs)
    sizes = [(30, 40), (25, 21)]
    images = [_image(generator, h, w) for h, w in sizes]
    rows = _random_rows(generator, 9, sizes, 12)
    for color in relpos.COLOR_MODES:
        _agree(images, _plan(rows, sizes, 12, 5), color)


@pytest.mark.parametrize("column, value", [(0, 2), (0, -1), (3, 500), (4, -1), (2, 40_000), (5, 3), (6, 17), (6, -2)])
def test_kernel_renders_the_placeholder_for_a_bad_row_and_raises_the_flag(column, value, generator):
    """A device-resident plan reaches the kernel unchecked: the kernel checks each row as it reads it. Launched
    here directly (the op checks a CPU plan before launching), a bad row must render the placeholder (image 0
    resized to the patch, at the origin), raise the flag, and leave the other rows as the C++ op renders them."""
    from relpos.kernels import extract_patches as kernel
    from relpos.plan_guard import plan_error_flag, raise_on_plan_errors

    patch, sizes = 16, [[40, 30], [25, 35]]
    images = [_image(generator, h, w) for h, w in sizes]
    packed = relpos.pack_images(images)
    rows = [[0, 40, 30, 3, 2, 0, 0], [1, 50, 70, 10, 40, 1, 5], [1, 25, 35, 9, 19, 2, 0], [0, 80, 60, 64, 44, 1, 7]]
    rows[1][column] = value
    plan = torch.tensor(rows, dtype=torch.int32)
    safe = plan.clone()
    safe[1] = torch.tensor([0, patch, patch, 0, 0, 0, 0])
    plan_error_flag("cpu").zero_()
    out = torch.full((4, 3, patch, patch), float("nan"))
    kernel.launch(packed.data, packed.meta, plan, out, 77, kernel.COLOR_DROP, patch, plan_error_flag("cpu"))
    want = torch.full_like(out, float("nan"))
    torch.ops.relpos.extract_patches_out(packed.data, packed.meta, safe, 77, "drop", want)
    assert torch.equal(out, want)
    with pytest.raises(ValueError, match="rows out of range"):
        raise_on_plan_errors("cpu")


def test_kernel_side_limit_is_the_library_one():
    from relpos.images import MAX_SIDE
    from relpos.kernels import extract_patches as kernel

    assert kernel.MAX_SIDE.value == MAX_SIDE




@triton.jit
def _philox_pair(seed, blocks, patches, mine, theirs, N: tl.constexpr):
    """The kernel's _philox words and tl.randint4x's for the same seed and counters."""
    i = tl.arange(0, N)
    block = tl.load(blocks + i)
    patch = tl.load(patches + i)
    words = _philox(seed, block.to(tl.uint32), patch.to(tl.uint32))
    reference = tl.randint4x(seed, (patch.to(tl.int64) << 32) | block.to(tl.int64))
    for k in tl.static_range(4):
        tl.store(mine + 4 * i + k, words[k].to(tl.int32, bitcast=True))
        tl.store(theirs + 4 * i + k, reference[k].to(tl.int32, bitcast=True))


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 2**32 + 12345, 2**62 + 987654321, -1])
def test_kernel_philox_is_triton_randint4x(seed, generator):
    """The kernel's own Philox (one wide multiply per product) gives tl.randint4x's words for every counter,
    keys near and past 32 bits included."""
    n = 64
    blocks = torch.randint(0, 2**31 - 1, (n,), generator=generator, dtype=torch.int64)
    patches = torch.randint(0, 2**31 - 1, (n,), generator=generator, dtype=torch.int64)
    blocks[:2], patches[:2] = torch.tensor([0, 2**31 - 2]), torch.tensor([0, 2**31 - 2])
    mine, theirs = torch.zeros(4 * n, dtype=torch.int32), torch.ones(4 * n, dtype=torch.int32)
    _philox_pair[(1,)](seed, blocks, patches, mine, theirs, N=n)
    assert torch.equal(mine, theirs)


def _launch(packed, plan, color, paired):
    from relpos.kernels import extract_patches as kernel
    from relpos.plan_guard import plan_error_flag
    from relpos.triton_op import _COLOR_CODES

    out = torch.full((plan.num_patches, 3, plan.patch_size, plan.patch_size), float("nan"))
    kernel.launch(packed.data, packed.meta, plan.patches, out, plan.seed, _COLOR_CODES[color], plan.patch_size,
                  plan_error_flag("cpu"), paired)
    return out


@pytest.mark.parametrize("layouts,widths,paired", [
    (("hwc", "hwc"), (37, 2), 3), (("chw", "chw"), (37, 2), 1),  # paired: the common pixel stride
    (("hwc", "hwc"), (37, 1), 0), (("hwc", "chw"), (37, 30), 0),  # a 1-pixel-wide image; mixed strides
])
@pytest.mark.parametrize("color", ["drop", "none"])
def test_paired_columns_read_what_the_tap_table_reads(layouts, widths, paired, color, generator):
    """Where the images share a pixel stride of 1 or 3 and are all >= 2 pixels wide, the kernel reads a tap's
    second column at the first plus one pixel (the last column's pair shifted left, weighted 0 and 1); elsewhere
    both columns come from the tap table. Both give the C++ op's bytes, on crops flush with the right edge of
    images scaled up (every tap there is a last-column one) and down, and on down-sampled patches."""
    from relpos.kernels import extract_patches as kernel

    patch, height = 16, 29
    images = [_image(generator, height, w) for w in widths]
    images = [image if layout == "hwc" else image.permute(2, 0, 1).contiguous()
              for image, layout in zip(images, layouts)]
    packed = relpos.pack_images(images)
    assert kernel.paired_columns(packed.meta) == paired
    rows = []
    for index, w in enumerate(widths):
        for rw in (max(patch, w), 10 * w + patch, patch):  # unscaled (or up to the patch), up-scaled, exact
            for left, down in ((rw - patch, 0), (0, 0), (rw - patch, 5)):
                rows.append([index, height, rw, height - patch, left, len(rows) % 3, down])
    plan = _plan(rows, [[height, w] for w in widths], patch, int(generator.seed()) % 2**62)
    want = torch.full((plan.num_patches, 3, patch, patch), float("nan"))
    torch.ops.relpos.extract_patches_out(packed.data, packed.meta, plan.patches, plan.seed, color, want)
    for forced in sorted({paired, 0}):
        assert torch.equal(_launch(packed, plan, color, forced), want), f"paired={forced}"


@triton.jit
def _column_taps(itab, wtab, start, in_size, out_size, PAIRED: tl.constexpr, LANES: tl.constexpr):
    _store_table(itab, wtab, 1, start + tl.arange(0, LANES), in_size, out_size, LANES, 1, LANES, PAIRED)


@pytest.mark.parametrize("in_size,out_size", [(2, 40), (3, 3), (7, 100), (41, 37), (41, 16), (300, 32)])
def test_paired_column_taps_stay_inside_the_row_and_blend_the_same(in_size, out_size, generator):
    """The image's column table (table 1) with PAIRED: each tap's pair (i0, i0 + 1) lies inside the row, and
    its blend of any row equals the plain table's (i0, i1) blend, bit for bit, for the 32 columns ending at the
    resized image's right edge (where every up-scaled tap is a last-column one) and those starting at its left."""
    lanes = 32
    row = torch.randint(0, 256, (in_size,), generator=generator).float()
    for start in sorted({max(0, out_size - lanes), 0}):
        tables = {}
        for paired in (0, 3):
            itab, wtab = torch.zeros(6 * lanes, dtype=torch.int64), torch.zeros(24 * lanes)
            _column_taps[(1,)](itab, wtab, start, in_size, out_size, PAIRED=paired, LANES=lanes)
            used = (start + torch.arange(lanes)) < out_size
            i0, i1 = itab[2 * lanes:3 * lanes][used], itab[3 * lanes:4 * lanes][used]
            bits = itab[5 * lanes:6 * lanes][used]
            w0 = (bits & 0xFFFFFFFF).to(torch.int32).view(torch.float32)
            w1 = (bits >> 32).to(torch.int32).view(torch.float32)
            tables[paired] = (i0, i1, w0, w1)
        i0, i1, w0, w1 = tables[0]
        p0, _, pw0, pw1 = tables[3]
        assert bool((p0 >= 0).all()) and bool((p0 + 1 <= in_size - 1).all()), (start, p0.tolist())
        assert torch.equal(pw0 * row[p0] + pw1 * row[p0 + 1], w0 * row[i0] + w1 * row[i1])
