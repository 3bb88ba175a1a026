"""`relpos eval` end to end on a tiny checkpoint: table, JSON, confusion matrix and pictures."""

import dataclasses
import json

import torch

from relpos.cli import main
from relpos.evaluation import faces, photo_regions
from relpos.training import train

from test_labelled import _labelled_folder
from training_helpers import small_photo_folder, tiny_config


def test_labelled_sets_are_real_and_disjoint():
    images, plan_train, y_train, plan_test, y_test, classes = photo_regions(96, per_class=5, seed=0)
    assert len(classes) >= 6 and len(images) == len(classes)
    assert torch.equal(torch.bincount(y_train), torch.full((len(classes),), 5))
    # train crops lie in the top half of each photo, test crops in the bottom half: no shared pixels
    half = plan_train.patches[:, 1] // 2
    assert bool((plan_train.patches[:, 3] + 96 <= half).all()) and bool((plan_test.patches[:, 3] >= half).all())
    images, plan_train, y_train, plan_test, y_test, classes = faces(96)
    assert len(images) == 200 and int(y_train.sum()) == 50 and int(y_test.sum()) == 50


def test_eval_writes_table_json_and_pictures(tmp_path, capsys, generator):
    photos = small_photo_folder(tmp_path / "photos", count=6)
    run = tmp_path / "run"
    train(tiny_config(photos, run, steps=2, patch=96, gap=48, jitter=7, min_pixels=150_000, max_pixels=200_000,
                      batch=64))
    out = tmp_path / "eval"
    assert main(["eval", str(run / "checkpoint.pt"), "--out", str(out), "--draws", "2", "--per-class", "6",
                 "--data", str(photos), "--queries", "3", "--labelled", str(_labelled_folder(tmp_path / "lab", generator)),
                 "--random-seeds", "2", "--folds", "2", "--min-per-class", "4"]) == 0
    text = capsys.readouterr().out
    assert "photo-regions" in text and "random" in text and "pretext" in text
    assert "majority label" in text and "balanced accuracy" in text
    assert "labelled photos (horizontal 8, vertical 8; 2-fold CV" in text and "fc6" in text
    results = json.loads((out / "eval.json").read_text())
    for task in ("photo-regions", "faces"):
        for tower in ("pretrained", "random"):
            assert 0.0 <= results["tasks"][task][tower]["linear_probe"] <= 1.0
            assert 0.0 < results["tasks"][task][tower]["majority"] < 1.0
    # faces is one fixed split: measured once, so no spread is claimed for it
    assert results["tasks"]["faces"]["pretrained"]["draws"] == 1
    assert "linear_probe_std" not in results["tasks"]["faces"]["pretrained"]
    assert results["tasks"]["photo-regions"]["pretrained"]["draws"] == 2
    pretext = results["pretext"]
    assert len(pretext["confusion"]) == 8 and pretext["items"] == sum(map(sum, pretext["confusion"]))
    assert 0.0 < pretext["majority"] < 1.0 and pretext["stderr"] > 0.0
    assert set(results["labelled"]["towers"]) == {"pretrained", "random0", "random1"}
    for picture in ("confusion.png", "neighbours.png", "grids.png", "pairs.png"):
        assert (out / picture).stat().st_size > 10_000


def test_eval_rejects_a_foreign_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, bogus)
    assert main(["eval", str(bogus), "--out", str(tmp_path / "e")]) == 1
    assert "not a relpos checkpoint" in capsys.readouterr().err


def test_neighbour_figure_with_few_or_no_usable_patches(tmp_path, caplog):
    """More neighbours asked for than other photographs' patches exist: the figure shows what there is; images too
    small for one grid: no figure, a warning, no crash (topk used to fail on both)."""
    from relpos.config import PatchConfig
    from relpos.evaluation import retrieval
    from relpos.models import build_tower

    config = PatchConfig.scaled(48, gap=8, jitter=2, min_pixels=20_000, max_pixels=20_000)
    towers = [build_tower("caffenet", 0.1, 48).eval() for _ in range(2)]
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (150, 150, 3), dtype=torch.uint8, generator=generator) for _ in range(2)]
    assert retrieval(images, config, *towers, "cpu", tmp_path / "few.png", queries=3, k=1000)
    assert (tmp_path / "few.png").stat().st_size > 5_000
    tiny = dataclasses.replace(config, min_pixels=2_000, max_pixels=2_000)  # resized to ~45 px: no grid at all
    assert not retrieval(images, tiny, *towers, "cpu", tmp_path / "none.png", queries=3)
    assert not (tmp_path / "none.png").exists() and "nearest-neighbour figure not drawn" in caplog.text
