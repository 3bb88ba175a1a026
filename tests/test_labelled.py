"""The labelled evaluation: grid embedding, stratified folds, cross-validation, selection, end to end (small)."""

import csv
import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from relpos.data.photos import read_manifest
from relpos.labelled import (cross_validate, embed, evaluate_labelled, evaluate_towers, format_labelled, grid_plan,
                             pretraining_hashes, select, stratified_folds)
from relpos.models import build_model, build_tower


def test_grid_plan_covers_a_short_side_of_192_with_whole_patches():
    plan = grid_plan([(300, 200), (100, 400), (96, 96)], patch=96)
    rows = plan.patches
    first = rows[rows[:, 0] == 0]
    assert first[0, 1:3].tolist() == [288, 192] and len(first) == 3 * 2  # 288x192: 3 rows of 2
    second = rows[rows[:, 0] == 1]
    assert second[0, 1:3].tolist() == [192, 768] and len(second) == 2 * 8
    assert len(rows[rows[:, 0] == 2]) == 4
    # every patch lies inside its resized image, and none overlap (distinct corners on a 96 grid)
    assert bool((rows[:, 3] + 96 <= rows[:, 1]).all()) and bool((rows[:, 4] + 96 <= rows[:, 2]).all())
    assert len({tuple(r) for r in rows[:, [0, 3, 4]].tolist()}) == len(rows)
    with pytest.raises(ValueError, match="short_side"):
        grid_plan([(300, 200)], patch=96, short_side=64)


def test_embed_averages_the_grid(generator):
    tower = build_tower("caffenet", 0.1, 96).eval()
    images = [torch.randint(0, 256, (192, 300, 3), dtype=torch.uint8, generator=generator) for _ in range(2)]
    got = embed(tower, images, ("conv3", "fc6"), "cpu", batch=3)  # batches that straddle images
    from relpos.ops import extract_patches

    plan = grid_plan([tuple(i.shape[:2]) for i in images])
    patches = extract_patches(images, plan, color="none", channels_last=True)
    for layer in ("conv3", "fc6"):
        with torch.no_grad():
            pooled = tower.pooled(patches, layer)
        expected = torch.stack([pooled[plan.patches[:, 0] == i].mean(0) for i in range(2)])
        torch.testing.assert_close(got[layer], expected, rtol=1e-4, atol=1e-5)


def test_stratified_folds_are_balanced_and_fixed():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    fold = stratified_folds(labels, 5, seed=3)
    assert torch.equal(fold, stratified_folds(labels, 5, seed=3))
    sizes = torch.bincount(fold)
    assert int(sizes.max() - sizes.min()) <= 1
    for label in range(3):
        per_fold = torch.bincount(fold[labels == label], minlength=5)
        assert int(per_fold.max() - per_fold.min()) <= 1
    with pytest.raises(ValueError, match="at least 5 items"):
        stratified_folds(torch.tensor([0] * 10 + [1] * 4), 5)


def test_cross_validate_separable_and_random(generator):
    y = torch.arange(60) % 3
    centres = 6 * torch.randn(3, 10, generator=generator)
    x = centres[y] + 0.2 * torch.randn(60, 10, generator=generator)
    fold = stratified_folds(y, 4)
    good = cross_validate(x, y, fold)
    assert good["linear_probe"]["mean"] == 1.0 and good["knn"]["mean"] == 1.0
    assert good["majority"]["mean"] == pytest.approx(1 / 3, abs=0.05)
    noise = cross_validate(torch.randn(60, 10, generator=generator), y, fold)
    assert noise["linear_probe"]["mean"] < 0.7
    folds = torch.tensor(noise["per_fold"]["linear_probe"], dtype=torch.float64)  # every fold may score alike: se 0
    assert noise["linear_probe"]["se"] == pytest.approx(float(folds.std() / len(folds) ** 0.5), abs=1e-12)


def _row(label, data, name):
    return {"file": name, "label": label, "sha256": hashlib.sha256(data).hexdigest()}


def test_select_drops_seen_excluded_and_small_classes():
    rows = [_row("a", bytes([i]), f"a{i}") for i in range(6)] + [_row("b", bytes([10 + i]), f"b{i}") for i in range(3)]
    rows += [_row("others", b"o%d" % i, f"o{i}") for i in range(9)] + [_row("", b"u", "u")]
    seen = {hashlib.sha256(bytes([0])).hexdigest()}
    chosen, dropped = select(rows, seen, min_per_class=4)
    assert [r["file"] for r in chosen] == ["a1", "a2", "a3", "a4", "a5"]
    assert dropped["seen_in_pretraining"] == 1 and dropped["small_classes"] == {"b": 3}


def _labelled_folder(root, generator):
    """Two classes of generated photographs: horizontal stripes vs vertical stripes, random phase and colour."""
    root.mkdir()
    rows = []
    for index in range(16):
        label = "horizontal" if index % 2 else "vertical"
        period = int(torch.randint(12, 30, (1,), generator=generator))
        coords = np.arange(260)
        wave = (np.sin(2 * np.pi * coords / period + index) > 0).astype(np.uint8) * 200 + 20
        plane = np.tile(wave[:, None] if label == "horizontal" else wave[None, :260], (1, 260) if label ==
                        "horizontal" else (200, 1))[:200, :260]
        picture = np.repeat(plane[..., None], 3, axis=2)
        picture[0, 0] = index  # no two files alike: two phases can round to the same stripes (sha256 dedup)
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, "PNG")
        name = f"{label}_{index}.png"
        (root / name).write_bytes(buffer.getvalue())
        rows.append({"file": name, "label": label, "source": "test", "version": "0", "licence": "CC0", "original": name,
                     "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), "width": 260, "height": 200})
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_evaluate_labelled_end_to_end(tmp_path, generator):
    folder = _labelled_folder(tmp_path / "photos", generator)
    model = build_model("caffenet", 0.1, 96)
    state = {"args": {"arch": "caffenet", "width": 0.1, "patch": 96, "data": str(folder), "holdout": 0.25},
             "model": model.state_dict()}
    # pretraining "saw" the training part of the same folder: those photos are not evaluated
    chosen, dropped = select(read_manifest(folder), pretraining_hashes(state["args"]), 1)
    assert dropped["seen_in_pretraining"] == 12 and len(chosen) == 4
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        evaluate_labelled(str(folder), state, "cpu", random_seeds=2, folds=3, min_per_class=5)
    state["args"]["data"] = str(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (300, 300)).save(tmp_path / "elsewhere" / "x.png")
    results = evaluate_labelled(str(folder), state, "cpu", random_seeds=2, folds=4, min_per_class=3)
    assert sum(results["counts"]) == 16 and results["classes"] == ["horizontal", "vertical"]
    assert set(results["towers"]) == {"pretrained", "random0", "random1"}
    assert set(results["towers"]["pretrained"]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6"}
    for name, layers in results["towers"].items():
        for layer, row in layers.items():
            assert row["majority"]["mean"] == pytest.approx(0.5)
            assert 0.0 <= row["linear_probe"]["mean"] <= 1.0 and row["linear_probe"]["se"] >= 0.0
    # stripes orientation is linearly readable from conv1 of any tower
    assert results["towers"]["random0"]["conv1"]["linear_probe"]["mean"] > 0.8
    text = format_labelled(results)
    assert "conv5" in text and "majority" in text and "2 seeds" in text


def test_same_tower_same_numbers(generator):
    # the pretrained tower and a random tower that is in fact the same weights must score identically
    torch.manual_seed(0)
    tower = build_tower("caffenet", 0.1, 96).eval()
    images = [torch.randint(0, 256, (200, 200, 3), dtype=torch.uint8, generator=generator) for _ in range(8)]
    labels = torch.tensor([0, 1] * 4)
    results = evaluate_towers(images, labels, {"pretrained": tower, "random0": tower}, "cpu", folds=2)
    assert results["towers"]["pretrained"] == results["towers"]["random0"]


def test_an_undecodable_labelled_photo_is_left_out_and_named(tmp_path, generator):
    """One bad file among the labelled photographs costs that photograph, not the evaluation (was: a traceback
    after the other probes had run)."""
    folder = _labelled_folder(tmp_path / "photos", generator)
    (folder / "vertical_0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # listed in the manifest, corrupt
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (300, 300)).save(tmp_path / "elsewhere" / "x.png")
    model = build_model("caffenet", 0.1, 96)
    state = {"args": {"arch": "caffenet", "width": 0.1, "patch": 96, "data": str(tmp_path / "elsewhere"),
                      "holdout": 0.25}, "model": model.state_dict()}
    results = evaluate_labelled(str(folder), state, "cpu", random_seeds=1, folds=3, min_per_class=3)
    assert sum(results["counts"]) == 15 and "vertical_0.png" not in results["files"]
    assert list(results["dropped"]["undecodable"]) == ["vertical_0.png"]


def test_eval_data_with_nothing_decodable_fails_before_the_probes(tmp_path, monkeypatch):
    import relpos.evaluation as evaluation

    bad = tmp_path / "bad"
    bad.mkdir()
    for index in range(3):
        (bad / f"b{index}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(30))
    import dataclasses

    from relpos.checkpoint import save_checkpoint
    from relpos.training import TrainConfig

    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint, {"model": build_model("caffenet", 0.1, 96).state_dict(), "step": 0,
                                 "args": dataclasses.asdict(TrainConfig(width=0.1))})
    monkeypatch.setattr(evaluation, "photo_regions", lambda *a, **k: pytest.fail("probes ran before the check"))
    with pytest.raises(ValueError, match="--data .*0 of 3 image files decode"):
        evaluation.run_eval(str(checkpoint), str(tmp_path / "eval"), retrieval_data=str(bad), device="cpu")
