"""README's generated figures say exactly what the files in docs/ say (docs/regenerate.py writes both), and the
regeneration runs README's own first command."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("regenerate", ROOT / "docs" / "regenerate.py")
regenerate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(regenerate)


def test_readme_blocks_match_the_files_in_docs():
    expected = regenerate.render_blocks()
    found = regenerate.readme_blocks((ROOT / "README.md").read_text())
    assert expected, "docs/ holds no figures"
    for name, text in expected.items():
        assert found.get(name) == text, f"README block '{name}' differs from docs/: run python docs/regenerate.py"


def test_regeneration_runs_the_readme_command():
    args = regenerate.readme_train_args((ROOT / "README.md").read_text())
    assert args[:2] == ["--out", "runs/demo"] and "--steps" in args


def test_a_block_is_replaced_once():
    text = "a\n<!-- BEGIN x -->\nold\n<!-- END x -->\nb"
    assert regenerate.write_blocks(text, {"x": "new"}) == "a\n<!-- BEGIN x -->\nnew\n<!-- END x -->\nb"


def test_the_recipe_block_pretrains_on_photos_the_labelled_folder_does_not_hold():
    commands = regenerate.readme_recipe_commands((ROOT / "README.md").read_text())
    photos = [c for c in commands if c[:2] == ["data", "photos"]]
    keeps = {c[c.index("--keep") + 1]: c[2] for c in photos}
    assert set(keeps) == {"labelled", "unlabelled"}
    assert all("--sources" not in c for c in photos)  # the same sources: a near-duplicate is never split
    train = next(c for c in commands if c[0] == "train")
    run = train[train.index("--out") + 1]
    assert train[train.index("--data") + 1] == keeps["unlabelled"]
    evaluation = next(c for c in commands if c[0] == "eval")
    assert evaluation[1] == f"{run}/checkpoint.pt" and evaluation[evaluation.index("--out") + 1] == f"{run}/eval"
    assert evaluation[evaluation.index("--labelled") + 1] == keeps["labelled"]


def test_seed_table_gains_are_over_the_random_towers_mean():
    def evaluation(pretrained, randoms):
        towers = {"pretrained": {"conv5": {"linear_probe": {"mean": pretrained}, "knn": {"mean": pretrained / 2}}}}
        for i, value in enumerate(randoms):
            towers[f"random{i}"] = {"conv5": {"linear_probe": {"mean": value}, "knn": {"mean": value / 2}}}
        return {"labelled": {"towers": towers}}

    def summary(accuracy):
        return {"commit": "abc1234", "held_out": {"accuracy": accuracy, "majority": 0.15}}

    runs = [(0, summary(0.30), evaluation(0.60, [0.50, 0.52, 0.54])),
            (1, summary(0.34), evaluation(0.66, [0.50, 0.52, 0.54]))]
    table = regenerate.render_seeds(runs).splitlines()
    assert table[-3] == "| 0 | 30.0% (15.0%) | +8.0 / +4.0 |"
    assert table[-2] == "| 1 | 34.0% (15.0%) | +14.0 / +7.0 |"
    assert table[-1] == "| mean ± SE of 2 | 32.0% ± 2.0% | +11.0 ± 3.0 / +5.5 ± 1.5 |"
    assert "Not run yet" not in regenerate.render_seeds(runs)
    assert regenerate.render_seeds(runs, missing=[2]).splitlines()[-1] == (
        "Not run yet on these photographs: seed 2 (`python docs/regenerate.py --only seeds --root ROOT` runs them).")


def test_the_recipe_figures_come_from_the_recipe_line_as_written():
    """README's recipe line and the runs its figures come from agree option by option (each run's summary records
    its configuration; seed N's run is the line with --seed N): a changed recipe line with stale docs/ files fails
    here, not silently in README."""
    import json
    from relpos.cli import build_parser
    commands = regenerate.readme_recipe_commands((ROOT / "README.md").read_text())
    train = next(c for c in commands if c[0] == "train")
    line = vars(build_parser().parse_args(train))
    summaries = [(0, regenerate.RECIPE_SUMMARY)] + [(s, regenerate.recipe_seed_files(s)[0])
                                                    for s in regenerate.RECIPE_SEEDS]
    # where the files were and went, how the run was watched, stopped and resumed: none changes a figure
    ignored = {"data", "out", "progress", "log_every", "workers", "device", "backend", "resume", "overwrite",
               "stop_after"}
    for seed, path in summaries:
        summary = json.loads(path.read_text())
        assert summary["step"] == line["steps"], f"{path.name} is not a run of README's recipe line"
        config = summary["config"]
        differ = {k: (config[k], line[k]) for k in config if k not in ignored and k in line and k != "seed"
                  and config[k] != line[k]}
        assert not differ, f"{path.name} (run, README line) differ in {differ}"
        assert config["seed"] == seed


def _fake_checkout(tmp_path, monkeypatch, seeds: tuple[int, ...], data_line: bool = True) -> None:
    """regenerate's README and docs/ replaced by a README in `tmp_path` whose recipe block is a `relpos data photos`
    line (unless `data_line` is False), a train line and an eval line, and an empty docs/ beside it."""
    lines = ["relpos data photos photos/pretrain --root ROOT --keep unlabelled"] if data_line else []
    lines += ["relpos train --data photos/pretrain --out runs/recipe --steps 5",
              "relpos eval runs/recipe/checkpoint.pt --out runs/recipe/eval"]
    readme = tmp_path / "README.md"
    readme.write_text("<!-- recipe-commands -->\n```sh\n" + "".join(line + "\n" for line in lines) + "```\n")
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(regenerate, "README", readme)
    monkeypatch.setattr(regenerate, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(regenerate, "RECIPE_SEEDS", seeds)


def test_a_seed_log_goes_in_a_folder_no_run_has_made_yet(tmp_path):
    """`--only seeds` alone: each seed's log is runs/recipe-seedN.log before any training has made runs/."""
    log = tmp_path / "runs" / "recipe-seed1.log"
    regenerate._relpos("--help", cwd=tmp_path, log=log)
    assert "usage" in log.read_text()


def test_a_failed_run_names_its_status_and_where_its_output_went(tmp_path):
    log = tmp_path / "runs" / "recipe-seed1.log"
    with pytest.raises(regenerate.RunFailed, match=f"`relpos train --no-such-option` exited with status 2; its "
                                                   f"output is in {re.escape(str(log))}"):
        regenerate._relpos("train", "--no-such-option", cwd=tmp_path, log=log)
    assert "--no-such-option" in log.read_text()


def test_failures_of_runs_inside_runs_are_listed_flat_one_per_line():
    """--recipe-beside-seeds waits for the recipe and for the seeds step, which waits for each seed: every failed
    run is one line of the message, whatever depth it failed at."""
    import concurrent.futures

    def fail(message):
        raise regenerate.RunFailed(message)

    def inner():
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            regenerate._wait_all([pool.submit(fail, "seed 1 failed"), pool.submit(fail, "seed 2 failed")])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(fail, "recipe failed"), pool.submit(inner)]
    with pytest.raises(regenerate.RunsFailed) as raised:
        regenerate._wait_all(futures)
    assert raised.value.failures == ["recipe failed", "seed 1 failed", "seed 2 failed"]
    assert str(raised.value) == ("regeneration runs failed:\n  - recipe failed\n  - seed 1 failed\n"
                                 "  - seed 2 failed")


def test_seeds_run_at_once_each_with_its_share_of_the_cores(tmp_path, monkeypatch):
    """`--only seeds` runs each seed's train line then its eval line; with J jobs, J seeds train at the same time,
    each with cores // J torch threads and its own log, and each summary says how its run shared the machine."""
    import json
    import shutil
    import threading
    work = tmp_path / "work"
    (work / "photos" / "pretrain").mkdir(parents=True)  # the data line has run (its manifest, written last): not again
    (work / "photos" / "pretrain" / "manifest.csv").write_text("path\n")
    _fake_checkout(tmp_path, monkeypatch, (1, 2))
    monkeypatch.setattr(regenerate.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    calls, lock = [], threading.Lock()
    trainers = {"together": threading.Barrier(2, timeout=10)}

    def fake_relpos(*args, cwd, threads=None, log=None):
        out = cwd / args[args.index("--out") + 1]
        with lock:
            calls.append((args[0], args[args.index("--out") + 1], threads, log.name))
        if args[0] == "train":
            trainers["together"].wait()  # BrokenBarrierError unless the other seed is training meanwhile
            out.mkdir(parents=True)
            (out / "summary.json").write_text(json.dumps({"step": 5}))
        else:
            out.mkdir(parents=True)
            (out / "eval.json").write_text("{}")
        return 1.0

    monkeypatch.setattr(regenerate, "_relpos", fake_relpos)
    regenerate._recipe_seeds(work, tmp_path / "pkgs", "abc1234")
    assert sorted(calls) == [("eval", "runs/recipe-seed1/eval", 2, "recipe-seed1.log"),
                             ("eval", "runs/recipe-seed2/eval", 2, "recipe-seed2.log"),
                             ("train", "runs/recipe-seed1", 2, "recipe-seed1.log"),
                             ("train", "runs/recipe-seed2", 2, "recipe-seed2.log")]
    for seed in (1, 2):
        summary = json.loads(regenerate.recipe_seed_files(seed)[0].read_text())
        assert (summary["seed"], summary["commit"], summary["torch_threads"], summary["concurrent_runs"]) == (
            seed, "abc1234", 2, 2)

    calls.clear()
    shutil.rmtree(work / "runs")
    trainers["together"] = threading.Barrier(1)  # one job: one seed after the other, each with every core
    regenerate._recipe_seeds(work, tmp_path / "pkgs", "abc1234", jobs=1)
    assert [call[:3] for call in calls] == [("train", "runs/recipe-seed1", 4), ("eval", "runs/recipe-seed1/eval", 4),
                                            ("train", "runs/recipe-seed2", 4), ("eval", "runs/recipe-seed2/eval", 4)]


def test_a_recipe_run_that_shared_the_cores_says_so():
    """A recipe summary whose wall time was measured beside other runs carries a note, and README prints it beside
    the time; a summary without one prints the time alone."""
    import json
    summary = json.loads(regenerate.RECIPE_SUMMARY.read_text())
    summary.pop("wall_note", None)
    alone = regenerate.render_recipe(summary)
    summary["wall_note"] = "beside two other runs, one torch thread each"
    shared = regenerate.render_recipe(summary)
    assert "beside two other runs" in shared and "beside two other runs" not in alone
    assert shared.replace(", both beside two other runs, one torch thread each", "") == alone


def test_the_recipe_can_train_beside_its_seeds(tmp_path, monkeypatch):
    """`--recipe-beside-seeds`: the data lines run once, then the recipe's run and every seed's train at the same
    time, each with cores // 3 torch threads; the recipe's summary names how its wall time was shared."""
    import json
    import threading
    _fake_checkout(tmp_path, monkeypatch, (1, 2))
    for name, value in [("RECIPE_SUMMARY", tmp_path / "docs" / "recipe_train_summary.json"),
                        ("RECIPE_EVAL", tmp_path / "docs" / "recipe_eval.json"),
                        ("RECIPE_FIGURES", {"curves.png": tmp_path / "docs" / "recipe_curves.png"})]:
        monkeypatch.setattr(regenerate, name, value)
    monkeypatch.setattr(regenerate.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    calls, lock, together = [], threading.Lock(), threading.Barrier(3, timeout=10)

    def fake_relpos(*args, cwd, threads=None, log=None):
        with lock:
            calls.append((args[0], args[2] if args[0] == "data" else args[args.index("--out") + 1], threads))
        if args[0] == "data":
            (cwd / args[2]).mkdir(parents=True)
            (cwd / args[2] / "manifest.csv").write_text("path\n")
            return 1.0
        out = cwd / args[args.index("--out") + 1]
        out.mkdir(parents=True)
        if args[0] == "train":
            together.wait()  # BrokenBarrierError unless all three runs train at the same time
            (out / "summary.json").write_text(json.dumps({"step": 5}))
            (out / "curves.png").write_bytes(b"png")
        else:
            (out / "eval.json").write_text("{}")
        return 90.0

    monkeypatch.setattr(regenerate, "_relpos", fake_relpos)
    regenerate._recipe_beside_seeds(tmp_path / "work", tmp_path / "pkgs", "abc1234")
    assert calls[0] == ("data", "photos/pretrain", None) and [c for c in calls if c[0] == "data"] == calls[:1]
    assert sorted(c for c in calls if c[0] == "train") == [("train", "runs/recipe", 2), ("train", "runs/recipe-seed1", 2),
                                                          ("train", "runs/recipe-seed2", 2)]
    recipe = json.loads(regenerate.RECIPE_SUMMARY.read_text())
    assert recipe["torch_threads"] == 2 and "2 other seeds' runs, 2 torch threads each on 6 cores" in recipe["wall_note"]
    for seed in (1, 2):
        assert json.loads(regenerate.recipe_seed_files(seed)[0].read_text())["concurrent_runs"] == 3


def test_every_failed_seed_is_reported_after_the_others_finish(tmp_path, monkeypatch):
    """A seed whose run fails does not hide another's failure, and the seeds still running finish first."""
    import json
    _fake_checkout(tmp_path, monkeypatch, (1, 2, 3), data_line=False)
    finished = []

    def fake_relpos(*args, cwd, threads=None, log=None):
        out = args[args.index("--out") + 1]
        if args[0] == "train" and out.endswith(("seed1", "seed3")):
            raise RuntimeError(f"{out} died")
        (cwd / out).mkdir(parents=True)
        (cwd / out / ("summary.json" if args[0] == "train" else "eval.json")).write_text(json.dumps({}))
        finished.append(out)
        return 1.0

    monkeypatch.setattr(regenerate, "_relpos", fake_relpos)
    with pytest.raises(SystemExit, match="(?s)seed1 died.*seed3 died"):
        regenerate._recipe_seeds(tmp_path / "work", tmp_path / "pkgs", "abc1234", jobs=1)
    assert finished == ["runs/recipe-seed2", "runs/recipe-seed2/eval"]
    assert regenerate.recipe_seed_files(2)[0].exists() and not regenerate.recipe_seed_files(1)[0].exists()


@pytest.mark.parametrize("argv,message", [(["--only", "seeds"], "--root"), (["--only", "demo,labelled"], "--labelled"),
                                          (["--only", "recipe", "--recipe-beside-seeds", "--root", "p"], "--only"),
                                          (["--only", "recipe,seeds", "--recipe-beside-seeds", "--seed-jobs", "1",
                                            "--root", "p"], "--seed-jobs")])
def test_bad_options_are_refused_before_anything_runs(argv, message, monkeypatch):
    monkeypatch.setattr(regenerate, "_relpos", lambda *a, **k: pytest.fail("ran before checking its options"))
    monkeypatch.setattr(regenerate, "_commit", lambda: pytest.fail("ran before checking its options"))
    with pytest.raises(SystemExit, match=message):
        regenerate.main(argv)


def test_a_work_folder_given_again_continues_only_at_its_commit(tmp_path):
    work = tmp_path / "work"
    assert regenerate._work_folder(work, "abc1234") == work.resolve()
    (work / "runs").mkdir()
    assert regenerate._work_folder(work, "abc1234") == work.resolve()  # the same commit: continued
    with pytest.raises(SystemExit, match="started at commit abc1234, this is def5678"):
        regenerate._work_folder(work, "def5678")
    # git's abbreviation grows with the repository: the same commit, printed longer or shorter, continues it
    assert regenerate._work_folder(work, "abc12345") == work.resolve()
    assert regenerate._work_folder(work, "abc1234") == work.resolve()
    (work / "COMMIT").write_text("\n")  # an emptied stamp is the prefix of every hash: it names no commit
    with pytest.raises(SystemExit, match="started at commit , this is abc1234"):
        regenerate._work_folder(work, "abc1234")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("")
    with pytest.raises(SystemExit, match="no COMMIT stamp"):
        regenerate._work_folder(tmp_path / "other", "abc1234")


def test_runs_cut_short_are_resumed_and_evaluations_redone(tmp_path, monkeypatch):
    """In a work folder given again: a data folder cut short (no manifest) is redone, a seed whose run left a
    checkpoint resumes and says its time is of the part after the stop, one that left none starts over, evaluations
    are replaced; called once more, finished runs are not trained again and keep their recorded times."""
    import json
    _fake_checkout(tmp_path, monkeypatch, (1, 2))
    work = tmp_path / "work"
    (work / "photos" / "pretrain").mkdir(parents=True)  # cut short: no manifest
    (work / "runs" / "recipe-seed1" / "eval").mkdir(parents=True)
    (work / "runs" / "recipe-seed1" / "checkpoint.pt").write_bytes(b"step 3000")
    (work / "runs" / "recipe-seed2").mkdir(parents=True)  # cut short before its first checkpoint
    calls = []

    def fake_relpos(*args, cwd, threads=None, log=None):
        calls.append(args)
        if args[0] == "data":
            (cwd / args[2] / "manifest.csv").write_text("path\n")
            return 2.0
        out = cwd / args[args.index("--out") + 1]
        out.mkdir(parents=True, exist_ok=True)
        finished = {"interrupted": False, "step": 5, "config": {"steps": 5}}
        (out / ("summary.json" if args[0] == "train" else "eval.json")).write_text(json.dumps(finished))
        return 30.0 if args[0] == "train" else 1.0

    monkeypatch.setattr(regenerate, "_relpos", fake_relpos)
    regenerate._recipe_seeds(work, tmp_path / "pkgs", "abc1234", jobs=1)
    flags = {(args[0], args[2] if args[0] == "data" else args[args.index("--out") + 1]):
             [a for a in args if a in ("--resume", "--overwrite")] for args in calls}
    assert flags == {("data", "photos/pretrain"): ["--overwrite"],
                     ("train", "runs/recipe-seed1"): ["--resume"], ("eval", "runs/recipe-seed1/eval"): ["--overwrite"],
                     ("train", "runs/recipe-seed2"): ["--overwrite"], ("eval", "runs/recipe-seed2/eval"): []}
    summaries = [json.loads(regenerate.recipe_seed_files(seed)[0].read_text()) for seed in (1, 2)]
    assert summaries[0]["train_note"].endswith("the time is of the part after the first stop")
    assert "train_note" not in summaries[1] and summaries[1]["wall_seconds"]["train"] == 30.0

    calls.clear()  # called again: both runs finished, neither trains; the evaluations are redone
    regenerate._recipe_seeds(work, tmp_path / "pkgs", "abc1234", jobs=1)
    assert [args[0] for args in calls] == ["eval", "eval"]
    again = [json.loads(regenerate.recipe_seed_files(seed)[0].read_text()) for seed in (1, 2)]
    assert [summary["wall_seconds"]["train"] for summary in again] == [30.0, 30.0]
    assert again[0]["train_note"] == summaries[0]["train_note"]


def _seed_run(seed: int, fc6_gain: float, accuracy: float = 0.336, majority: float = 0.151):
    """A seed's (seed, summary, evaluation) whose pretrained tower beats three random towers at 0.5 by `fc6_gain`
    points at fc6 (and ties them elsewhere)."""
    def tower(gain: float) -> dict:
        return {layer: {metric: {"mean": 0.5 + (gain if layer == "fc6" else 0.0) / 100, "se": 0.01}
                        for metric in ("linear_probe", "knn")}
                for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6")}
    towers = {"pretrained": tower(fc6_gain), **{f"random{i}": tower(0.0) for i in range(3)}}
    return seed, {"held_out": {"accuracy": accuracy, "majority": majority}}, {"labelled": {"towers": towers}}


@pytest.mark.parametrize("gains,lenient,strict", [((7.1, 9.3, 15.7), "met", "not met"),
                                                  ((14.0, 15.0, 16.0), "met", "met"),
                                                  ((2.0, 3.0, 25.0), "not met", "not met"),
                                                  ((9.0, 9.5, 9.8), "not met", "not met")])
def test_the_targets_block_reads_the_probe_target_both_ways(gains, lenient, strict):
    """The verdicts are computed from the seeds' gains: as written down before the runs (mean >= 10 and > 2 SE above
    zero) and strictly (mean - 2 SE >= 10); the pretext verdict from held-out accuracy against twice the majority."""
    text = regenerate.render_targets([_seed_run(seed, gain) for seed, gain in enumerate(gains)])
    assert f"above zero) it is **{lenient}**" in text and f"at least +10), it is **{strict}**" in text
    assert "is **met**: 33.6%" in text
    below = sum(gain < 10 for gain in gains)
    assert f"and {below} seed{'s' * (below != 1)} of 3" in text
    low = regenerate.render_targets([_seed_run(seed, 12.0, accuracy=0.29) for seed in range(3)])
    assert "is **not met**: 29.0%" in low
    mixed = [_seed_run(seed, gain) for seed, gain in enumerate(gains)]
    mixed[0][1]["commit"], mixed[1][1]["commit"] = "aaa1111", "bbb2222"
    assert "not one commit's figures" in regenerate.render_targets(mixed)


def test_no_figure_of_the_targets_block_is_rounded_onto_the_other_side_of_its_threshold():
    """A mean of +9.96 is not printed as +10.0 beside "not met", nor a ratio of 1.997 as 2.00 beside "not met"."""
    close = regenerate.render_targets([_seed_run(seed, 9.96, accuracy=0.29955, majority=0.15) for seed in range(3)])
    assert "**+9.96 ± 0.0** points (+9.96, +9.96, +9.96)" in close and "that bound is +9.96" in close
    assert "is **not met**: 30.0% ± 0.0% against 15.0% (1.997×)" in close
    clear = regenerate.render_targets([_seed_run(seed, gain) for seed, gain in enumerate((7.1, 9.3, 15.7))])
    assert "**+10.7 ± 2.6** points (+7.1, +9.3, +15.7)" in clear and "(2.23×)" in clear  # one decimal where it is safe
    assert regenerate._judged(10.04, 10.0) == "+10.0" and regenerate._judged(9.999, 10.0) == "+9.999"


def test_a_run_trained_over_several_recorded_calls_sums_their_times(tmp_path, monkeypatch):
    import json
    work = tmp_path / "work"
    (work / "runs" / "recipe").mkdir(parents=True)
    (work / "runs" / "recipe" / "checkpoint.pt").write_bytes(b"step 6000")
    (work / "wall_seconds.json").write_text(json.dumps({"runs/recipe": [{"seconds": 100.0, "resumed": False}]}))
    monkeypatch.setattr(regenerate, "_relpos", lambda *args, **kwargs: 30.0)
    seconds, note = regenerate._train(["train", "--out", "runs/recipe"], work)
    assert seconds == 130.0 and note == "trained in 2 calls, stopped and resumed from a checkpoint; the time is their sum"


def test_a_failed_step_is_raised_even_when_readme_cannot_be_rewritten(monkeypatch, tmp_path, capsys):
    """The failure that stopped the regeneration is what the caller sees, not an error of the README rewrite after it."""
    monkeypatch.setattr(regenerate, "_commit", lambda: "abc1234")
    monkeypatch.setattr(regenerate, "_relpos", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("the run died")))
    monkeypatch.setattr(regenerate, "render_blocks", lambda: (_ for _ in ()).throw(ValueError("half-written json")))
    monkeypatch.setattr(regenerate, "README", tmp_path / "README.md")
    (tmp_path / "README.md").write_text("```bash\npip install . && relpos train --out runs/demo --steps 5\n```\n")
    with pytest.raises(RuntimeError, match="the run died"):
        regenerate.main(["--only", "demo", "--work", str(tmp_path / "work")])
    assert "README.md not rewritten" in capsys.readouterr().err
