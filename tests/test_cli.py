"""The command-line tool: help texts and `relpos show` writing its pictures."""

import subprocess
import sys

import pytest
from PIL import Image

from relpos.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("show", "train"):
        assert command in text


def test_show_writes_grids_and_pairs(tmp_path):
    out = tmp_path / "pairs.png"
    assert main(["show", "--out", str(out), "--pairs", "8"]) == 0
    for path in (out, tmp_path / "pairs_grids.png"):
        with Image.open(path) as image:
            assert image.size[0] > 300 and image.size[1] > 200


@pytest.mark.parametrize("geometry", [["--patch", "64", "--gap", "32"], ["--patch", "40", "--gap", "20", "--jitter", "3"]])
def test_show_draws_the_smaller_patches_training_accepts(tmp_path, geometry):
    # train scales the down-sampling range to the patch (PatchConfig.scaled); show once kept 96-px's and refused these
    out = tmp_path / "pairs.png"
    assert main(["show", *geometry, "--out", str(out), "--pairs", "4"]) == 0
    assert out.exists() and (tmp_path / "pairs_grids.png").exists()


def test_show_never_overwrites_an_earlier_run(tmp_path, capsys):
    out = tmp_path / "pairs.png"
    grids = tmp_path / "pairs_grids.png"
    grids.write_bytes(b"an earlier run's picture")
    assert main(["show", "--out", str(out), "--pairs", "4"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert grids.read_bytes() == b"an earlier run's picture" and not out.exists()
    assert main(["show", "--out", str(out), "--pairs", "4", "--overwrite"]) == 0
    with Image.open(grids) as image:
        assert image.size[0] > 300


def test_show_rejects_a_corrupt_file(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    assert main(["show", str(bad), "--out", str(tmp_path / "x.png")]) == 1
    assert "broken.jpg" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "relpos.cli", "show", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--color" in result.stdout


@pytest.mark.parametrize("command", [["train"], ["eval"], ["bench"], ["data", "photos"]])
def test_help_shows_a_default_only_where_there_is_one(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: True)" not in text
    assert "(default: " in text  # the options that have one still show it


def test_show_names_the_file_of_an_image_too_small_for_a_pair(tmp_path, capsys):
    Image.new("RGB", (10, 10)).save(tmp_path / "tiny.png")
    assert main(["show", str(tmp_path / "tiny.png"), "--out", str(tmp_path / "x.png")]) == 1
    assert "tiny.png: image 0 (10x10)" in capsys.readouterr().err
