"""README's generated figures say exactly what the files in docs/ say (docs/regenerate.py writes both), and the
regeneration runs README's own first command."""

import importlib.util
from pathlib import Path

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
        "Not run yet on these photographs: seed 2 (`python docs/regenerate.py --only seeds` runs them).")


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
