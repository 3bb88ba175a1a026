"""Pretext tasks: the jigsaw permutation set and plans, the head input, every backend rendering jigsaw tiles
like the reference, and jigsaw runs (resume, checkpoint contents, eval) beside relative-position ones."""

import dataclasses
import json

import pytest
import torch

import relpos
from relpos.checkpoint import load_checkpoint
from relpos import backends
from relpos.ops import check_plan
from relpos.plan import LEFT, TOP
from relpos.plan_guard import check_plan_rows
from relpos.pretext import Jigsaw, RelativePosition, build_pretext, hamming_distances, head_input, permutation_set
from relpos.train.config import pretext_from_checkpoint
from relpos.train.loop import train

from conftest import SMALL, random_images, subset
from training_helpers import small_photo_folder, tiny_config

TILE_CONFIG = relpos.PatchConfig.scaled(patch=12, gap=4, jitter=2, min_pixels=6_000, max_pixels=12_000, grids_per_image=3)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_photo_folder(tmp_path_factory.mktemp("photos"))


def test_permutation_set_is_fixed_far_apart_and_nested():
    table = permutation_set(100)
    assert table.shape == (100, 9) and table.dtype == torch.int64
    assert torch.equal(table.sort(dim=1).values, torch.arange(9).expand(100, 9))  # every row a permutation
    assert len({tuple(row) for row in table.tolist()}) == 100
    distances = hamming_distances(table)
    assert distances["min"] >= 6 and distances["mean"] > 8.0  # a random set of 100 has minimum 2 or less
    assert torch.equal(permutation_set(10), table[:10])  # greedy: a smaller set is the start of a larger one
    assert hamming_distances(permutation_set(4))["min"] == 9  # no tile stays in place between any two
    for bad in (1, 1001):
        with pytest.raises(ValueError, match="permutations"):
            permutation_set(bad)


def test_jigsaw_plan_is_a_shuffled_grid_of_jittered_tiles(generator):
    task = Jigsaw(TILE_CONFIG, 24)
    sizes = [[int(v) for v in torch.randint(60, 200, (2,), generator=generator)] for _ in range(6)] + [[30, 400]]
    seed = int(torch.randint(0, 2**31, (), generator=generator))
    plan = task.draw(sizes, seed=seed)
    again = task.draw(sizes, seed=seed)
    assert torch.equal(plan.patches, again.patches) and torch.equal(plan.pairs, again.pairs)
    assert 6 in plan.skipped  # 30 px high: no 3x3 grid fits
    reason = plan.skip_reasons[plan.skipped.index(6)]  # for the skipped-file log: the size and the rule it fails
    assert reason.startswith("30x400 ") and "puzzle footprint" in reason
    puzzles = plan.num_pairs
    assert puzzles == 3 * (len(sizes) - len(plan.skipped)) and plan.pairs.shape == (puzzles, 9)
    assert plan.labels.min() >= 0 and plan.labels.max() < 24
    stride, jitter = TILE_CONFIG.patch + TILE_CONFIG.gap, TILE_CONFIG.jitter
    for k in range(puzzles):
        base = 9 * k
        # slot j shows tile permutation[j] of this puzzle's grid
        assert torch.equal(plan.pairs[k], base + task.permutations[plan.labels[k]])
        rows = plan.patches[base : base + 9].long()
        assert len(set(rows[:, 0].tolist())) == 1  # one image per puzzle
        corner = rows[:, [TOP, LEFT]].reshape(3, 3, 2)
        steps_down, steps_right = corner[1:, :, 0] - corner[:-1, :, 0], corner[:, 1:, 1] - corner[:, :-1, 1]
        for step in (steps_down, steps_right):  # grid spacing, moved by at most the jitter at each end
            assert int(step.min()) >= stride - 2 * jitter and int(step.max()) <= stride + 2 * jitter
    images = relpos.pack_images([torch.zeros((h, w, 3), dtype=torch.uint8) for h, w in sizes])
    check_plan(plan, images)  # the plan's form: dtype, shape, device, patch size, image sizes
    check_plan_rows(plan.patches, len(sizes), plan.patch_size)  # every tile inside its resized image
    with pytest.raises(ValueError, match="puzzle footprint"):
        task.draw([[30, 400]], seed=0, on_small="raise")


def test_head_input_keeps_the_plan_order():
    features = torch.randn(18, 5)
    index = torch.stack([torch.randperm(9) for _ in range(2)]) + torch.tensor([[0], [9]])
    joined = head_input(features, index)
    assert joined.shape == (2, 45)
    for k in range(2):
        assert torch.equal(joined[k].reshape(9, 5), features[index[k]])
    pairs = torch.tensor([[3, 1], [0, 2]])
    assert torch.equal(head_input(features, pairs), torch.cat([features[pairs[:, 0]], features[pairs[:, 1]]], 1))


def _backends():
    cases = [("cpu", "cpu")] + ([("cpu", "triton")] if backends.triton_runs_on(torch.device("cpu")) else [])
    if torch.cuda.is_available():
        cases += [("cuda", "triton")] + ([("cuda", "cuda")] if backends.has_cuda_extension() else [])
    return cases


@pytest.mark.parametrize("device,backend", _backends(), ids=str)
@pytest.mark.parametrize("color", ["drop", "project", "none"])
def test_jigsaw_tiles_render_like_the_reference(generator, device, backend, color):
    """The tiles are plan rows like any patch, so each backend renders them as the reference does (to the last-bit
    rounding of a tile's float64 mean and scale, as for every patch; backends agree bit for bit among themselves,
    tests/test_backends.py)."""
    images = random_images(generator, 4, low=60, high=140, layout="hwc")
    plan = Jigsaw(TILE_CONFIG, 10).draw([img.shape[:2] for img in images],
                                        seed=int(torch.randint(0, 2**31, (), generator=generator)))
    assert plan.num_pairs > 0
    if backend == "triton" and device == "cpu":  # Triton's interpreter: one puzzle's tiles keep it quick
        plan = subset(plan, torch.arange(9))
    expected = relpos.extract_patches_reference(relpos.pack_images(images), plan, color)
    out = torch.full((plan.num_patches, 3, 12, 12), float("nan"), device=device)  # poisoned: all must be written
    relpos.extract_patches([img.to(device) for img in images], plan, color=color, backend=backend, out=out)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-4)


def test_tasks_name_their_classes_and_models():
    relative, jigsaw = build_pretext("relpos", SMALL), build_pretext("jigsaw", TILE_CONFIG, 12)
    assert isinstance(relative, RelativePosition) and relative.num_classes == 8 and relative.chance == 1 / 8
    assert jigsaw.num_classes == 12 and jigsaw.class_names[0] == " ".join(map(str, jigsaw.permutations[0].tolist()))
    tile36 = Jigsaw(relpos.PatchConfig.scaled(patch=36), 12)
    net = tile36.build_model("caffenet", 0.125)
    logits = net(torch.randn(18, 3, 36, 36), torch.arange(18).reshape(2, 9))
    assert logits.shape == (2, 12)
    with pytest.raises(ValueError, match="task"):
        build_pretext("colorization", SMALL)
    with pytest.raises(ValueError, match="permutations"):
        Jigsaw(TILE_CONFIG, torch.zeros(5, 9, dtype=torch.int64))


def _jigsaw(photos, out, **overrides):
    return tiny_config(photos, out, task="jigsaw", permutations=12, patch=40, gap=4, jitter=2, batch=72,
                       min_pixels=45_000, max_pixels=60_000, **overrides)


def test_jigsaw_resumes_to_the_same_weights_and_saves_its_permutations(photos, tmp_path):
    straight = _jigsaw(photos, tmp_path / "straight", steps=4, eval_every=4, checkpoint_every=2)
    summary = train(straight)
    assert summary["task"] == "jigsaw" and summary["held_out"]["items"] > 0
    halves = dataclasses.replace(straight, out=str(tmp_path / "halves"), stop_after=2)
    assert train(halves)["interrupted"]
    train(dataclasses.replace(halves, stop_after=-1, resume=True))
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "halves" / "checkpoint.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    saved = a["pretext"]
    assert saved["task"] == "jigsaw" and torch.equal(saved["permutations"], permutation_set(12))
    assert json.loads((tmp_path / "straight" / "permutations.json").read_text()) == permutation_set(12).tolist()
    assert a["model"]["head.layers.5.weight"].shape[0] == 12  # a 12-way classifier
    with pytest.raises(ValueError, match="task"):  # a jigsaw run does not continue as relative position
        train(dataclasses.replace(straight, task="relpos", steps=6, resume=True))


def test_eval_reads_the_task_from_the_checkpoint(photos, tmp_path, monkeypatch):
    from relpos import evaluation

    out = tmp_path / "jigsaw"
    train(_jigsaw(photos, out, steps=1, holdout=0.25))
    state = load_checkpoint(out / "checkpoint.pt")
    task = pretext_from_checkpoint(state)
    assert isinstance(task, Jigsaw) and torch.equal(task.permutations, permutation_set(12))
    _, model, _, _ = evaluation.load_towers(out / "checkpoint.pt", torch.device("cpu"))
    result = evaluation._pretext(state, model, torch.device("cpu"), tmp_path)
    assert result["task"] == "jigsaw" and result["items"] > 0 and len(result["confusion"]) == 12
    assert (tmp_path / "confusion.png").stat().st_size > 1000


def test_a_version_2_relative_position_checkpoint_still_loads_and_resumes(photos, tmp_path):
    out = tmp_path / "old"
    config = tiny_config(photos, out, steps=3, stop_after=2)
    assert train(config)["interrupted"]
    state = load_checkpoint(out / "checkpoint.pt")
    old = {key: value for key, value in state.items() if key not in ("pretext", "format", "version")}
    old["args"] = {k: v for k, v in old["args"].items() if k not in ("task", "permutations")}
    import io

    buffer = io.BytesIO()
    torch.save({"format": "relpos-checkpoint", "version": 2, **old}, buffer)
    (out / "checkpoint.pt").write_bytes(buffer.getvalue())
    assert isinstance(pretext_from_checkpoint(load_checkpoint(out / "checkpoint.pt")), RelativePosition)
    summary = train(dataclasses.replace(config, stop_after=-1, resume=True))
    assert summary["step"] == 3 and summary["task"] == "relpos"


def test_show_draws_a_sheet_of_puzzles(tmp_path, capsys):
    from relpos.cli import main

    assert main(["show", "--task", "jigsaw", "--permutations", "10", "--puzzles", "2", "--out",
                 str(tmp_path / "puzzles.png")]) == 0
    assert "4 puzzles" in capsys.readouterr().out  # 4 puzzles per image (PatchConfig.grids_per_image)
    assert (tmp_path / "puzzles.png").stat().st_size > 10_000 and (tmp_path / "puzzles_grids.png").exists()


def test_train_options_and_checks_come_from_one_place():
    """Every TrainConfig field has its help; a choice or bound refused by `check` is the one the CLI offers."""
    from relpos.train.config import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        assert field.metadata["help"], field.name
    for name, bad in (("task", "colorization"), ("color", "sepia"), ("backend", "tpu"), ("permutations", 1)):
        with pytest.raises(ValueError, match=f"--{name}"):
            TrainConfig(**{name: bad}).check()
    assert {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume_may_change"]} >= {"workers", "out"}


def test_evaluation_and_bench_do_not_load_the_training_loop():
    import subprocess
    import sys

    code = ("import sys, relpos.evaluation, relpos.bench; "
            "print(sorted(m for m in sys.modules if m in ('relpos.train.loop', 'relpos.training')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_mirrored_pairs_are_the_pairs_of_the_mirrored_image(generator):
    from relpos.ops import extract_patches
    from relpos.plan import OFFSET_TO_LABEL, Plan
    from relpos.pretext.relative_position import MIRRORED_LABEL

    for (dr, dc), label in OFFSET_TO_LABEL.items():  # the label map is the geometry of a left-right mirror
        assert MIRRORED_LABEL[label] == OFFSET_TO_LABEL[(dr, -dc)] and MIRRORED_LABEL[MIRRORED_LABEL[label]] == label
    height, width, patch, gap = 70, 90, 16, 5
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    # a centre patch and its 8 neighbours, plain crops at the image's own size (no resampling to compare)
    top0, left0 = int(torch.randint(0, height - 3 * patch - 2 * gap + 1, (), generator=generator)), 7
    cells = [(r, c) for r in range(3) for c in range(3)]
    def rows(mirror):
        return torch.tensor([[0, height, width, top0 + r * (patch + gap),
                              (width - left0 - (c + 1) * patch - c * gap) if mirror else left0 + c * (patch + gap),
                              0, 0] for r, c in cells], dtype=torch.int32)
    centre = cells.index((1, 1))
    pairs = torch.tensor([[centre, i] for i in range(9) if i != centre])
    labels = torch.tensor([OFFSET_TO_LABEL[(cells[i][0] - 1, cells[i][1] - 1)] for i in range(9) if i != centre])
    def render(img, mirror):
        plan = Plan(patches=rows(mirror), pairs=pairs, labels=labels, seed=3, patch_size=patch,
                    image_sizes=torch.tensor([[height, width]]))
        return extract_patches([img], plan, color="none", backend="reference")
    flipped, mirrored_labels = RelativePosition(SMALL).mirrored(render(image, False), labels)
    # the pairs of the mirrored image: the same rows (the cells mirror within the image), the labels of its geometry
    expected = render(image.flip(1), True)
    torch.testing.assert_close(flipped, expected, rtol=0, atol=1e-5)
    assert not torch.equal(mirrored_labels, labels)
    for (first, second), mirrored in zip(pairs.tolist(), mirrored_labels.tolist()):
        # in the mirrored image the second patch of a pair sits at the column mirrored around the first
        (r1, c1), (r2, c2) = cells[first], cells[second]
        assert mirrored == OFFSET_TO_LABEL[(r2 - r1, c1 - c2)]
