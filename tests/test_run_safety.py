"""Users' files are data and earlier runs are never destroyed: checkpoints cannot run code, run folders are
locked and not overwritten, bad option values and environment failures give one clear line."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from relpos.checkpoint import CheckpointError, load_checkpoint
from relpos.cli import main
from relpos.run_folder import RunFolderError, claim_run_folder
from relpos.training import train

from training_helpers import small_photo_folder, tiny_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_photo_folder(tmp_path_factory.mktemp("photos"))


class _Payload:
    """Unpickling this runs `touch MARKER`: what a crafted checkpoint would do with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["eval", "export", "resume"])
def test_a_crafted_checkpoint_does_not_run_code(photos, tmp_path, command, capsys):
    marker = tmp_path / "payload-ran"
    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.pt"
    torch.save({"format": "relpos-checkpoint", "version": 2, "model": {}, "step": 0, "args": {},
                "evil": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    if command == "resume":
        with pytest.raises(CheckpointError):
            train(tiny_config(photos, run, resume=True))
    else:
        target = tmp_path / ("eval" if command == "eval" else "tower.safetensors")
        assert main([command, str(path), "--out", str(target)]) == 1
        assert "could run code" in capsys.readouterr().err
    assert not marker.exists()
    # the payload is real: loading the same file the unsafe way does run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoints_hold_only_plain_data_and_resume_restores_every_rng(photos, tmp_path):
    import random

    import numpy as np

    config = tiny_config(photos, tmp_path / "run", steps=2)
    train(config)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # weights_only=True inside
    assert isinstance(state["rng"]["numpy"]["key"], torch.Tensor)
    from relpos.checkpoint import set_numpy_rng_state, set_python_rng_state

    set_numpy_rng_state(state["rng"]["numpy"])
    set_python_rng_state(state["rng"]["python"])
    first = (np.random.rand(), random.random())
    set_numpy_rng_state(state["rng"]["numpy"])
    set_python_rng_state(state["rng"]["python"])
    assert (np.random.rand(), random.random()) == first


def test_an_earlier_run_is_never_overwritten(photos, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(photos, out, steps=2))
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl")}
    with pytest.raises(RunFolderError, match="--resume.*--overwrite"):
        train(tiny_config(photos, out, steps=2, seed=4))
    assert {name: (out / name).read_bytes() for name in before} == before
    summary = train(tiny_config(photos, out, steps=2, seed=4, overwrite=True))
    assert summary["step"] == 2 and load_checkpoint(out / "checkpoint.pt")["args"]["seed"] == 4
    with pytest.raises(RunFolderError, match="contradict"):
        train(tiny_config(photos, out, steps=2, resume=True, overwrite=True))


def test_overwrite_leaves_no_file_of_the_earlier_run(photos, tmp_path):
    """A jigsaw run overwritten by a relative-position run: its permutations.json goes with the rest."""
    out = tmp_path / "run"
    train(tiny_config(photos, out, steps=1, task="jigsaw", permutations=12, patch=40, gap=4, jitter=2, batch=72))
    assert (out / "permutations.json").exists()
    train(tiny_config(photos, out, steps=1, overwrite=True))
    assert not (out / "permutations.json").exists()


def test_overwrite_names_an_evaluation_of_the_replaced_run(photos, tmp_path, caplog):
    """relpos eval --out RUN/eval is another command's output: --overwrite keeps it, but warns that it describes
    the run being replaced."""
    out = tmp_path / "run"
    train(tiny_config(photos, out, steps=1))
    evaluation = out / "eval"
    claim_run_folder(evaluation).release()
    (evaluation / "eval.json").write_text("{}")
    with caplog.at_level("WARNING", logger="relpos.run_folder"):
        train(tiny_config(photos, out, steps=1, overwrite=True))
    assert (evaluation / "eval.json").exists()
    assert any(str(evaluation) in record.getMessage() and "replaces" in record.getMessage() for record in caplog.records)


def test_any_folder_with_files_is_refused_too(photos, tmp_path):
    out = tmp_path / "papers"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own file\n")
    with pytest.raises(RunFolderError, match="already holds files"):
        train(tiny_config(photos, out, steps=1))
    assert (out / "metrics.jsonl").read_text() == "my own file\n"


def test_overwrite_never_takes_a_users_file_for_a_runs(photos, tmp_path):
    """--overwrite removes a run's files only where the same command wrote them: a curves.png the user keeps beside
    their photographs (a folder no relpos command wrote, or one `relpos data photos` assembled) stays."""
    for folder, assembled in ((tmp_path / "mine", False), (tmp_path / "assembled", True)):
        folder.mkdir()
        if assembled:
            claim_run_folder(folder, option="DIR", kind="data photos").release()
        (folder / "curves.png").write_bytes(b"the user's own figure")
        with pytest.raises(RunFolderError, match=r"curves\.png, not from an earlier `relpos train`"):
            train(tiny_config(photos, folder, steps=1, overwrite=True))
        assert (folder / "curves.png").read_bytes() == b"the user's own figure"
        assert not (folder / "checkpoint.pt").exists()
    # an earlier train run's files, under a lock written before locks named their command, are replaced as before
    run = tmp_path / "run"
    train(tiny_config(photos, run, steps=1))
    (run / ".relpos.lock").write_bytes(b"")
    train(tiny_config(photos, run, steps=1, seed=3, overwrite=True))
    assert load_checkpoint(run / "checkpoint.pt")["args"]["seed"] == 3
    assert (run / ".relpos.lock").read_text() == "train\n"
    # another command's --overwrite on the run folder (nothing of its own there) keeps it the run's: the lock
    # lists every command that wrote the folder
    claim_run_folder(run, overwrite=True, run_files=("eval.json",), kind="eval").release()
    assert (run / ".relpos.lock").read_text().splitlines() == ["eval", "train"]
    train(tiny_config(photos, run, steps=1, seed=4, overwrite=True))
    assert load_checkpoint(run / "checkpoint.pt")["args"]["seed"] == 4
    # a legacy lock with only a picture of this command beside it proves nothing: refused, and said so
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / ".relpos.lock").write_bytes(b"")
    (legacy / "curves.png").write_bytes(b"a figure")
    with pytest.raises(RunFolderError, match="older relpos wrote the folder without recording"):
        claim_run_folder(legacy, overwrite=True)
    assert (legacy / "curves.png").exists()


def test_a_second_run_on_the_same_folder_fails_at_once(tmp_path):
    code = ("import sys, time; from relpos.run_folder import claim_run_folder; "
            "claim_run_folder(sys.argv[1], resume=False, overwrite=False); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match="in use by another relpos run"):
            claim_run_folder(tmp_path / "run", resume=True, overwrite=False)
    finally:
        holder.kill()
        holder.wait()
    claim_run_folder(tmp_path / "run", resume=True, overwrite=False).release()  # free again once it died


def test_no_drawable_pair_stops_with_a_clear_error_and_json_stays_strict(photos, tmp_path):
    """Our error alone: not PyTorch's warning about a scheduler step before any optimizer step (a pairless step advances
    the schedule on purpose, so that resumes are exact)."""
    import warnings
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ValueError, match="no pair of 200-px patches"):
        warnings.simplefilter("always")
        train(tiny_config(photos, tmp_path / "big", patch=200))
    assert not [str(w.message) for w in caught if "lr_scheduler.step()" in str(w.message)]
    from relpos.metrics import strict_json

    assert json.loads(strict_json({"loss": float("nan"), "x": [float("inf")]})) == {"loss": None, "x": [None]}


def test_a_file_name_that_is_not_utf8_is_used(photos, tmp_path):
    data = small_photo_folder(tmp_path / "data", count=4)
    source = next(data.glob("*.jpg"))
    odd = os.fsdecode(bytes(data) + b"/caf\xe9-\xff.jpg")
    os.rename(source, odd)
    summary = train(tiny_config(data, tmp_path / "run", steps=2))
    assert summary["train_images"] + summary["held_out_images"] == 4


def test_the_data_path_is_stored_absolute(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(photos.parent)
    train(tiny_config(Path(photos.name), tmp_path / "run", steps=1))
    stored = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["args"]["data"]
    assert Path(stored).is_absolute() and Path(stored) == photos.resolve()


@pytest.mark.parametrize("change", [{"weight_decay": 0.5}, {"dropout": 0.5}, {"data": "OTHER"}, {"precision": "bf16"}])
def test_resume_refuses_any_change_that_alters_the_run(photos, tmp_path, change):
    config = tiny_config(photos, tmp_path / "run", steps=3, stop_after=1)
    train(config)
    if change.get("data") == "OTHER":
        change = {"data": str(small_photo_folder(tmp_path / "other", count=3))}
    with pytest.raises(CheckpointError, match=f"--{next(iter(change)).replace('_', '-')}"):
        train(dataclasses.replace(config, resume=True, stop_after=-1, **change))
    # what may change (how the run executes) is accepted
    train(dataclasses.replace(config, resume=True, stop_after=-1, log_every=2, workers=1))


def _train_args(photos, out):
    return ["train", "--data", str(photos), "--out", str(out), "--steps", "1", "--batch", "48", "--width", "0.125",
            "--workers", "0", "--patch", "48", "--gap", "24", "--jitter", "3", "--min-pixels", "30000",
            "--max-pixels", "50000", "--no-progress", "--device", "cpu"]


BAD_TRAIN_OPTIONS = [
    ("--steps", "0"), ("--steps", "-3"), ("--batch", "0"), ("--lr", "0"), ("--lr", "inf"), ("--lr", "nan"),
    ("--lr", "-1e-3"), ("--weight-decay", "-1"), ("--dropout", "1"), ("--dropout", "-0.1"), ("--width", "0"),
    ("--width", "1e9"), ("--holdout", "1.5"),
    ("--holdout", "-0.1"), ("--eval-every", "0"), ("--checkpoint-every", "0"), ("--log-every", "-1"),
    ("--eval-plans", "0"), ("--patch", "0"), ("--patch", "100000"), ("--gap", "-1"), ("--jitter", "-5"),
    ("--min-pixels", "0"), ("--max-pixels", "1e12"), ("--grids-per-image", "0"), ("--grids-per-image", "257"),
    ("--max-nonfinite", "0"), ("--workers", "-1"),
    ("--seed", "-1"), ("--seed", str(2**32)), ("--warmup", "-1"), ("--stop-after", "-7"), ("--device", "bogus"),
    ("--device", "cuda:x"),
    ("--permutations", "1"), ("--permutations", "5000"), ("--task", "colorization"), ("--color", "sepia"),
    ("--mirror", "--task=jigsaw"),  # mirroring is defined for relative positions only
]


@pytest.mark.parametrize("option,value", BAD_TRAIN_OPTIONS, ids=[f"{o}={v}" for o, v in BAD_TRAIN_OPTIONS])
def test_bad_train_values_give_one_line_and_a_nonzero_exit(photos, tmp_path, option, value, capsys):
    args = _train_args(photos, tmp_path / "run") + [option, value]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse: a value of the wrong type
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("case", ["out-is-a-file", "out-inside-a-file", "data-missing"])
def test_environment_failures_give_one_line(photos, tmp_path, case, capsys):
    out = tmp_path / "run"
    args = _train_args(photos, out)
    if case == "out-is-a-file":
        out.write_text("x")
    elif case == "out-inside-a-file":  # cannot be created (as on a read-only or foreign mount)
        (tmp_path / "file").write_text("x")
        args[args.index("--out") + 1] = str(tmp_path / "file" / "run")
    else:
        args[args.index("--data") + 1] = str(tmp_path / "nowhere")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


def test_disk_full_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    import relpos.checkpoint as checkpoint

    def full(handle, payload):
        handle.write(payload[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_all", full)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}, "step": 0, "args": {}})
    assert list(tmp_path.iterdir()) == []


def test_options_the_mode_ignores_are_named(photos, tmp_path, caplog):
    train(tiny_config(photos, tmp_path / "run", steps=1, resident=True, workers=3))
    assert "ignored: --workers" in caplog.text


def test_train_prints_a_start_line_and_what_it_wrote(photos, tmp_path, capsys):
    assert main(_train_args(photos, tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert out.startswith("relpos train: cpu, backend ")
    assert "training images" in out and "held out" in out
    assert f"Next: relpos eval {tmp_path / 'run' / 'checkpoint.pt'}" in out


@pytest.mark.parametrize("overrides", [{"max_pixels": 10**10}, {"grids_per_image": 10**6}, {"patch": 5000},
                                       {"gap": 10**7}])
def test_absurd_plan_configurations_are_refused(overrides):
    from relpos import PatchConfig

    with pytest.raises(ValueError, match=next(iter(overrides))):
        PatchConfig(**overrides)


def test_both_decode_paths_refuse_huge_files_before_reading(tmp_path, monkeypatch):
    import relpos.data.gpu_decode as gpu_decode
    from relpos.regular_files import MAX_FILE_BYTES
    from relpos.data import ImageError, load_rgb

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:  # sparse: the size is real, the disk use is not
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageError, match="too large a file"):
        load_rgb(huge)
    monkeypatch.setattr(gpu_decode, "MAX_FILE_BYTES", 1000)  # the raw reader reads up to the limit: keep it small
    (tmp_path / "big.jpg").write_bytes(b"\xff" * 1001)
    path, reason = gpu_decode.RawFiles([tmp_path / "big.jpg"])[0]
    assert isinstance(reason, str) and "too large a file" in reason


BAD_SHOW_OPTIONS = [("--pairs", "0"), ("--pairs", "-2"), ("--patch", "0"), ("--patch", "x"), ("--gap", "-1"),
                    ("--jitter", "-3"), ("--seed", "-1"), ("--backend", "fast"), ("--permutations", "1"),
                    ("--puzzles", "0")]


@pytest.mark.parametrize("option,value", BAD_SHOW_OPTIONS, ids=[f"{o}={v}" for o, v in BAD_SHOW_OPTIONS])
def test_bad_show_values_give_one_line(tmp_path, option, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["show", "--out", str(tmp_path / "pairs.png"), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_eval_checks_the_stored_data_folder_before_any_probe(photos, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(photos, data)
    train(tiny_config(data, tmp_path / "run", steps=1))
    shutil.rmtree(data)
    assert main(["eval", str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert "training data" in err and str(data) in err
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_held_out_images_are_streamed_not_kept(photos, tmp_path, monkeypatch):
    """At most a couple of decoded held-out images are alive at once during evaluation (a list would hold all)."""
    import weakref

    import relpos.train.loop as training

    alive_at_most = []
    real = training.iter_decodable_images

    def watched(paths, *rest):
        refs = []
        for image in real(paths, *rest):
            refs.append(weakref.ref(image))
            alive_at_most.append(sum(ref() is not None for ref in refs))
            yield image
            del image

    monkeypatch.setattr(training, "iter_decodable_images", watched)
    train(tiny_config(photos, tmp_path / "run", steps=3, holdout=0.5))
    assert len(alive_at_most) >= 4  # the evaluation did see several held-out images
    assert max(alive_at_most) <= 2, alive_at_most


def test_resuming_a_finished_run_keeps_its_held_out_figures(photos, tmp_path):
    """A finished run resumed again, or one killed after its final checkpoint but before summary.json, keeps the
    held-out evaluation it made (was: rewritten as null, losing the run's result)."""
    out = tmp_path / "run"
    config = tiny_config(photos, out, steps=3, holdout=0.5)
    finished = train(config)
    assert finished["held_out"] is not None
    again = train(dataclasses.replace(config, resume=True))
    assert again["held_out"] == finished["held_out"]
    assert json.loads((out / "summary.json").read_text())["held_out"] == json.loads(json.dumps(finished["held_out"]))
    (out / "summary.json").unlink()  # killed between the last checkpoint and the summary
    train(dataclasses.replace(config, resume=True))
    assert json.loads((out / "summary.json").read_text())["held_out_accuracy"] == finished["held_out_accuracy"]


def test_a_cut_last_line_of_the_skipped_log_does_not_block_resume(photos, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(photos, data)
    (data / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    out = tmp_path / "run"
    config = tiny_config(data, out, steps=4, holdout=0.0, stop_after=2)
    assert train(config)["interrupted"]
    log = out / "skipped.jsonl"
    assert "corrupt.jpg" in log.read_text()
    with open(log, "a") as handle:
        handle.write('{"path": "/somewhere/half-writ')  # a kill in the middle of a line
    summary = train(dataclasses.replace(config, stop_after=-1, resume=True))
    assert not summary["interrupted"] and summary["skipped_files"] == 1


def test_the_largest_seed_accepted_trains(photos, tmp_path):
    """Every seed the option accepts gives valid streams (was: --seed above ~1.4e11 crashed at step 0)."""
    summary = train(tiny_config(photos, tmp_path / "run", steps=1, holdout=0.0, seed=2**32 - 1))
    assert summary["step"] == 1 and not summary["interrupted"]


def test_a_bad_held_out_file_is_reported_and_not_counted(photos, tmp_path):
    """A held-out file that does not decode goes in skipped.jsonl like a bad training file (was: silently left out
    of the evaluation while summary.json said 0 skipped and counted it among the held-out images)."""
    import shutil

    from relpos.data import list_images, split_holdout

    data = tmp_path / "data"
    shutil.copytree(photos, data)
    for index in range(12):
        (data / f"broken{index}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    train_paths, held = split_holdout(list_images(data), 0.5)
    bad_held = {str(p) for p in held if p.name.startswith("broken")}
    assert bad_held and any(p.name.startswith("broken") for p in train_paths)  # both sides hold a broken file
    out = tmp_path / "run"
    summary = train(tiny_config(data, out, steps=2, holdout=0.5, eval_every=2))
    skipped = {json.loads(line)["path"] for line in (out / "skipped.jsonl").read_text().splitlines()}
    assert bad_held <= skipped
    assert summary["held_out_images"] == len(held) - len(bad_held)
    assert summary["skipped_files"] == len(skipped)


def test_a_run_folder_inside_the_data_is_not_trained_on(photos, tmp_path):
    """--out inside --data: the next run must not take the first run's curves.png for a photograph, while a
    `relpos data photos` folder (which holds only the lock) stays data."""
    import shutil

    from relpos.data import list_images

    data = tmp_path / "data"
    shutil.copytree(photos, data)
    before = list_images(data)
    train(tiny_config(data, data / "runs" / "first", steps=1, holdout=0.0))
    assert (data / "runs" / "first" / "curves.png").exists()
    (data / "runs" / "first" / "eval").mkdir()
    Image.new("RGB", (200, 200)).save(data / "runs" / "first" / "eval" / "neighbours.png")
    assert list_images(data) == before
    photos_folder = data / "assembled"
    photos_folder.mkdir()
    (photos_folder / ".relpos.lock").touch()
    Image.new("RGB", (200, 200)).save(photos_folder / "p.png")
    assert photos_folder / "p.png" in list_images(data)


def test_summary_names_the_photographs_by_content(photos, tmp_path):
    """summary.json's images_sha256: the same photographs in another folder give the same digests, so two runs of a
    recipe can tell whether they saw the same pictures; one changed training photograph changes only the train
    digest (the previous session could not tell whether re-downloaded packages had changed its photographs)."""
    import hashlib
    import shutil

    from relpos.data import list_images, split_holdout

    def expected(paths):
        hashes = sorted(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths)
        return hashlib.sha256("\n".join(hashes).encode()).hexdigest()

    copy = tmp_path / "elsewhere"
    shutil.copytree(photos, copy)
    first = train(tiny_config(photos, tmp_path / "a", steps=1, holdout=0.5, eval_every=1))
    second = train(tiny_config(copy, tmp_path / "b", steps=1, holdout=0.5, eval_every=1))
    train_paths, held = split_holdout(list_images(photos), 0.5)
    assert first["images_sha256"] == {"train": expected(train_paths), "held_out": expected(held)}
    assert second["images_sha256"] == first["images_sha256"]
    changed = [p for p in split_holdout(list_images(copy), 0.5)[0]][0]
    changed.write_bytes(Path(held[0]).read_bytes())  # another photograph under the same name
    third = train(tiny_config(copy, tmp_path / "c", steps=1, holdout=0.5, eval_every=1))
    assert third["images_sha256"]["train"] != first["images_sha256"]["train"]
    assert third["images_sha256"]["held_out"] == first["images_sha256"]["held_out"]
