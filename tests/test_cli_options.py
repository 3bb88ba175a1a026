"""Every option of every subcommand: a bad value or a bad environment gives one clear line and exit code 2
(argparse) or 1 (at run time), never a traceback, and writes nothing. The completeness test fails when an
option is added without a row here (train's and show's rows live in test_run_safety.py)."""

import argparse
import logging

import pytest

from relpos.cli import build_parser, main

from test_run_safety import BAD_SHOW_OPTIONS, BAD_TRAIN_OPTIONS

# (subcommand words, option, bad value): refused by argparse with exit 2, naming the option
BAD_VALUES = [
    (["bench"], "--images", "0"), (["bench"], "--images", "x"), (["bench"], "--rounds", "-1"),
    (["bench"], "--workers", "-3"), (["bench"], "--width", "inf"), (["bench"], "--width", "0"),
    (["bench"], "--device", "bogus"), (["bench"], "--device", "cuda:x"), (["bench"], "--arch", "12"),
    (["eval", "ck.pt"], "--draws", "0"), (["eval", "ck.pt"], "--seeds", "-1"), (["eval", "ck.pt"], "--per-class", "1"),
    (["eval", "ck.pt"], "--k", "0"), (["eval", "ck.pt"], "--queries", "0"), (["eval", "ck.pt"], "--random-seeds", "0"),
    (["eval", "ck.pt"], "--folds", "1"), (["eval", "ck.pt"], "--min-per-class", "0"),
    (["eval", "ck.pt"], "--layer", "conv9"), (["eval", "ck.pt"], "--device", "gpu"),
    (["data", "photos", "DIR"], "--min-side", "-5"), (["data", "photos", "DIR"], "--min-side", "nan"),
    (["data", "photos", "DIR"], "--keep", "some"),
]


@pytest.mark.parametrize("words,option,value", BAD_VALUES, ids=[f"{w[0]}{o}={v}" for w, o, v in BAD_VALUES])
def test_bad_values_are_refused_by_the_parser(tmp_path, monkeypatch, words, option, value, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(words + [option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument" in err and option in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("relpos")  # usage, then the one error line
    assert not list(tmp_path.iterdir())


def _case(tmp_path, name):
    """(argv, message fragment) of a run-time failure; files it needs are made in tmp_path."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("someone's notes")
    folder_pt = tmp_path / "tower.pt"
    folder_pt.mkdir()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    return {
        "bench-out-is-a-file": (["bench", "--quick", "--out", str(a_file)], "not a folder"),
        "eval-missing-checkpoint": (["eval", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")], "not a file"),
        "eval-out-is-a-file": (["eval", str(junk), "--out", str(a_file)], "not a folder"),
        "eval-out-holds-files": (["eval", str(junk), "--out", str(busy)], "already holds files"),
        "eval-corrupt-checkpoint": (["eval", str(junk), "--out", str(tmp_path / "e")], "unreadable"),
        "export-missing-checkpoint": (["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "t.pt")],
                                      "does not exist"),
        "export-corrupt-checkpoint": (["export", str(junk), "--out", str(tmp_path / "t.pt")], "unreadable"),
        "export-bad-suffix": (["export", str(junk), "--out", str(tmp_path / "t.bin")], ".safetensors or .pt"),
        "export-out-exists": (["export", str(junk), "--out", str(junk)], "already exists"),
        "export-out-is-a-folder": (["export", str(junk), "--out", str(folder_pt)], "is a folder"),
        "photos-dir-is-a-file": (["data", "photos", str(a_file)], "not a folder"),
        "photos-dir-holds-files": (["data", "photos", str(busy)], "already holds files"),
        "photos-root-missing": (["data", "photos", str(tmp_path / "p"), "--root", str(tmp_path / "none")],
                                "--root"),
        "photos-unknown-source": (["data", "photos", str(tmp_path / "p"), "--sources", "bogus"], "--sources"),
    }[name]


RUNTIME_CASES = ["bench-out-is-a-file", "eval-missing-checkpoint", "eval-out-is-a-file", "eval-out-holds-files",
                 "eval-corrupt-checkpoint", "export-missing-checkpoint", "export-corrupt-checkpoint",
                 "export-bad-suffix", "export-out-exists", "export-out-is-a-folder", "photos-dir-is-a-file",
                 "photos-dir-holds-files", "photos-root-missing", "photos-unknown-source"]


@pytest.mark.parametrize("name", RUNTIME_CASES)
def test_runtime_failures_give_one_line_and_leave_files_alone(tmp_path, name, capsys):
    argv, fragment = _case(tmp_path, name)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".relpos.lock"} == before


def test_options_a_mode_ignores_are_named(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        main(["eval", str(tmp_path / "none.pt"), "--folds", "3"])  # fails (no checkpoint) after the warning
        with pytest.raises(SystemExit):  # --help exits at once; the warning is only for runs
            main(["bench", "--help"])
    assert "--folds is ignored without --labelled" in caplog.text
    from relpos.bench import _warn_ignored

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _warn_ignored(build_parser().parse_args(["bench", "--arch", "80", "--quick", "--rounds", "3"]))
    assert "--arch is ignored" in caplog.text and "--rounds is ignored" in caplog.text


def _subcommands(parser, prefix=()):
    """(words, subparser) for every leaf subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, prefix + (name,))
            return
    yield prefix, parser


# Options that take no value, or free text whose failures are the run-time cases above / in test_run_safety.py.
NO_BAD_VALUE = {
    "train": {"--resident", "--resume", "--overwrite", "--no-progress", "--data", "--out"},
    "show": {"--out", "--color", "--overwrite"},
    "eval": {"--overwrite", "--out", "--data", "--labelled"},
    "bench": {"--reference", "--train", "--quick", "--static", "--out"},
    "export": {"--overwrite", "--out"},
    "data photos": {"--overwrite", "--root", "--sources"},
}


def test_every_option_of_every_subcommand_has_a_row():
    covered = {"train": {o for o, _ in BAD_TRAIN_OPTIONS}, "show": {o for o, _ in BAD_SHOW_OPTIONS}}
    for words, option, _ in BAD_VALUES:
        covered.setdefault(" ".join(w for w in words if w not in ("ck.pt", "DIR")), set()).add(option)
    missing = {}
    for words, parser in _subcommands(build_parser()):
        name = " ".join(words)
        options = {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
        choice_options = {s for a in parser._actions if a.choices for s in a.option_strings}
        # an option with argparse choices is refused by argparse itself; one row per command shows it
        rest = options - covered.get(name, set()) - NO_BAD_VALUE.get(name, set()) - choice_options
        if rest:
            missing[name] = sorted(rest)
    assert not missing, f"options without a bad-value row: {missing}"
