"""The sampler against hand-computed cases: grid sizes, spacing, clamping, labels, skipping, determinism."""

import math

import pytest
import torch

from relpos import LABEL_TO_OFFSET, PatchConfig, sample_plan
from relpos.plan import CHANNEL, DOWN, HEIGHT, IMAGE, LEFT, TOP, WIDTH
from relpos.sampler import grid_pairs, resized_size


def test_defaults_follow_the_paper():
    config = PatchConfig()
    assert (config.patch, config.gap, config.jitter, config.grids_per_image) == (96, 48, 7, 4)
    assert (config.min_pixels, config.max_pixels) == (150_000, 450_000)
    assert config.min_side == 2 * 96 + 48 + 7 == 247
    assert config.downsample_prob == pytest.approx(1 / 3)


def test_resized_size_keeps_aspect_and_pixel_count():
    assert resized_size(100, 200, 20_000 * 4) == (200, 400)
    h, w = resized_size(480, 640, 300_000)
    assert abs(h * w - 300_000) < 1000 and abs(w / h - 640 / 480) < 0.01


def test_grid_pairs_hand_computed():
    # A 1x2 grid: the right cell sees the left one at label 3 (left), the left sees the right one at 4.
    pairs, labels = grid_pairs(1, 2)
    assert sorted(zip(map(tuple, pairs.tolist()), labels.tolist())) == [((0, 1), 4), ((1, 0), 3)]
    # A 2x2 grid: 6 neighbour relations (2 rows, 2 columns, 2 diagonals), each in both orders.
    pairs, labels = grid_pairs(2, 2)
    got = dict(zip(map(tuple, pairs.tolist()), labels.tolist()))
    assert len(got) == 12
    assert got[(3, 0)] == 0 and got[(0, 3)] == 7  # up-left / down-right
    assert got[(2, 0)] == 1 and got[(0, 2)] == 6  # up / down
    assert got[(2, 1)] == 2 and got[(1, 2)] == 5  # up-right / down-left
    assert got[(1, 0)] == 3 and got[(0, 1)] == 4  # left / right
    # 3x3: 12 orthogonal + 8 diagonal relations.
    assert grid_pairs(3, 3)[0].shape[0] == 2 * 20


def test_label_layout():
    assert LABEL_TO_OFFSET == {0: (-1, -1), 1: (-1, 0), 2: (-1, 1), 3: (0, -1), 4: (0, 1), 5: (1, -1), 6: (1, 0), 7: (1, 1)}


@pytest.mark.parametrize("size", [(600, 800), (480, 480), (1000, 300)])
def test_grid_geometry_without_jitter(size):
    config = PatchConfig(jitter=0, grids_per_image=6)
    plan = sample_plan([size], config, seed=int(torch.randint(0, 10**6, ())))
    stride = config.stride
    for grid in plan.grid_ids.unique():
        rows = plan.patches[plan.grid_ids == grid]
        height, width = int(rows[0, HEIGHT]), int(rows[0, WIDTH])
        assert 150_000 - 2000 <= height * width <= 450_000 + 2000
        tops, lefts = rows[:, TOP].unique(), rows[:, LEFT].unique()
        start_y, start_x = int(tops.min()), int(lefts.min())
        assert 0 <= start_y < stride and 0 <= start_x < stride
        assert len(tops) == (height + config.gap - start_y) // stride  # grid size per axis
        assert len(lefts) == (width + config.gap - start_x) // stride
        assert torch.equal(tops, start_y + stride * torch.arange(len(tops), dtype=tops.dtype))
        assert int(tops.max()) + config.patch <= height and int(lefts.max()) + config.patch <= width


def test_pair_labels_match_geometry():
    config = PatchConfig(jitter=0)
    plan = sample_plan([[700, 900], [500, 520]], config, seed=7)
    first, second = plan.patches[plan.pairs[:, 0]], plan.patches[plan.pairs[:, 1]]
    assert torch.equal(first[:, IMAGE], second[:, IMAGE])
    dy = (second[:, TOP] - first[:, TOP]) // config.stride
    dx = (second[:, LEFT] - first[:, LEFT]) // config.stride
    expected = torch.tensor([LABEL_TO_OFFSET[int(label)] for label in plan.labels])
    assert torch.equal(torch.stack([dy, dx], 1), expected.to(dy.dtype))
    # every pair comes in both orders with the mirrored label
    forward = {(a, b): l for (a, b), l in zip(plan.pairs.tolist(), plan.labels.tolist())}
    assert all(forward[(b, a)] == 7 - l for (a, b), l in forward.items())


def test_jitter_is_clamped_into_the_image():
    config = PatchConfig(patch=96, gap=0, jitter=40)
    plan = sample_plan([[400, 400]] * 8, config, seed=3)
    p = plan.patches
    assert bool((p[:, TOP] >= 0).all() and (p[:, LEFT] >= 0).all())
    assert bool((p[:, TOP] + 96 <= p[:, HEIGHT]).all() and (p[:, LEFT] + 96 <= p[:, WIDTH]).all())
    assert bool((p[:, TOP] == 0).any())  # some jitter was clamped at the border


def test_small_images_are_skipped_not_crashed_on():
    # Resizing fixes the pixel count, so what decides is the aspect ratio: 150 000 pixels on a 1:10 image
    # give 122 x 1225 (too thin), on a square 387 x 387 (fine).
    config = PatchConfig(min_pixels=150_000, max_pixels=150_000)
    plan = sample_plan([[100, 1000], [2000, 2000], [3000, 200]], config, seed=0)
    assert plan.skipped == [0, 2]
    assert set(plan.patches[:, IMAGE].tolist()) == {1}
    empty = sample_plan([[10, 10]], PatchConfig(min_pixels=60_000, max_pixels=60_000), seed=0)  # 245 x 245
    assert empty.num_patches == 0 and empty.num_pairs == 0 and empty.skipped == [0]


def test_per_patch_choices():
    plan = sample_plan([[600, 800]] * 40, PatchConfig(), seed=11)
    channel, down = plan.patches[:, CHANNEL], plan.patches[:, DOWN]
    assert set(channel.tolist()) == {0, 1, 2}
    chosen = down[down > 0]
    assert int(chosen.min()) >= 10 and int(chosen.max()) <= 95  # floor(sqrt(U(100, 9025)))
    assert abs(len(chosen) / len(down) - 1 / 3) < 0.05


def test_same_seed_same_plan_other_seed_other_plan():
    a = sample_plan([[600, 800], [700, 500]], seed=5)
    b = sample_plan([[600, 800], [700, 500]], seed=5)
    c = sample_plan([[600, 800], [700, 500]], seed=6)
    assert torch.equal(a.patches, b.patches) and torch.equal(a.pairs, b.pairs) and a.seed == b.seed
    assert not torch.equal(a.patches, c.patches) and a.seed != c.seed  # other grids and other noise


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="image_sizes must have shape"):
        sample_plan([100, 200])
    with pytest.raises(ValueError, match="empty"):
        sample_plan(torch.zeros((0, 2)))
    with pytest.raises(ValueError, match="positive"):
        sample_plan([[0, 10]])
    with pytest.raises(ValueError, match="either generator or seed"):
        sample_plan([[600, 600]], generator=torch.Generator(), seed=1)
    with pytest.raises(ValueError, match="downsample_area"):
        PatchConfig(downsample_area=(100, 96 * 96 + 500))
    assert math.isqrt(9025) == 95


def test_images_whose_resized_side_would_pass_max_side_are_skipped():
    """A long thin picture at a large pixel count (hostile-input battery: 400x30000 at --max-pixels 1e8 resized to
    1155x86603) passed the sampler and the plan guard then ended the whole run; it is skipped like a small one."""
    from relpos.images import MAX_SIDE

    config = PatchConfig(min_pixels=100_000_000, max_pixels=100_000_000)
    plan = sample_plan([[400, 30000], [4000, 3000]], config, seed=0)
    assert plan.skipped == [0]
    assert set(plan.patches[:, IMAGE].tolist()) == {1}
    assert int(plan.patches[:, 1:3].max()) <= MAX_SIDE  # resized sides of the kept image
    with pytest.raises(ValueError, match=rf"image 0 \(400x30000\) .*over the {MAX_SIDE}-pixel limit"):
        sample_plan([[400, 30000]], config, seed=0, on_small="raise")
    from relpos.pretext import build_pretext

    jigsaw = build_pretext("jigsaw", PatchConfig(min_pixels=100_000_000, max_pixels=100_000_000), permutations=10)
    assert jigsaw.draw([[400, 30000], [4000, 3000]], seed=0).skipped == [0]


def test_images_that_would_be_enlarged_more_than_max_upscale_are_skipped():
    """A 1x1 pixel or an icon used to be blown up to 150 000+ pixels and trained on (reviewer finding 9); now an image
    is too small when reaching the drawn pixel count would enlarge it more than MAX_UPSCALE per side."""
    from relpos.sampler import MAX_UPSCALE

    config = PatchConfig(min_pixels=150_000, max_pixels=150_000)
    side = 387  # 150 000 pixels on a square
    smallest = math.ceil(side / MAX_UPSCALE)  # 97: enlarged 3.99x
    plan = sample_plan([[1, 1], [64, 64], [smallest - 1, smallest - 1], [smallest, smallest], [2000, 2000]], config,
                       seed=0)
    assert plan.skipped == [0, 1, 2]
    assert set(plan.patches[:, IMAGE].tolist()) == {3, 4}
    with pytest.raises(ValueError, match=r"image 0 \(1x1\) .* enlarged 387.0x"):
        sample_plan([[1, 1]], config, seed=0, on_small="raise")
    # the jigsaw sampler applies the same rule
    from relpos.pretext import build_pretext

    jigsaw = build_pretext("jigsaw", PatchConfig.scaled(64, gap=8, jitter=3, min_pixels=150_000, max_pixels=150_000),
                           permutations=10)
    assert jigsaw.draw([[1, 1], [64, 64], [600, 600]], seed=0).skipped == [0, 1]
    with pytest.raises(ValueError, match="enlarged"):
        jigsaw.draw([[64, 64]], seed=0, on_small="raise")


@pytest.mark.parametrize("task", ["relpos", "jigsaw"])
def test_fits_at_some_scale_agrees_with_a_dense_scan_of_the_range(task):
    """Training reports an image as a bad file only when no pixel count of the range gives it an item; the counts
    that do can be a narrow interval (62x400 fits only near 396k of 150k-450k), which sparse sampling misses."""
    from relpos.pretext import build_pretext
    from relpos.sampler import too_small

    pretext = build_pretext(task, PatchConfig())
    low, high = pretext.config.min_pixels, pretext.config.max_pixels
    generator = torch.Generator().manual_seed(5)
    sizes = [(62, 400), (61, 400), (100, 150), (99, 150), (40, 2000), (300, 300), (60, 60), (5000, 40)]
    sizes += [tuple(s) for s in torch.randint(30, 700, (16, 2), generator=generator).tolist()]
    targets = [low + (high - low) * k / 19_999 for k in range(20_000)]
    for height, width in sizes:
        scanned = any(too_small(height, width, resized_size(height, width, t), pretext.min_side, "") is None
                      for t in targets)
        assert pretext.fits_at_some_scale(height, width) == scanned, (height, width)
    assert pretext.fits_at_some_scale(*((62, 400) if task == "relpos" else (100, 150)))
