"""Faults, end to end: kills, signals, bad files, NaN, missing extension, corrupt checkpoints.

Each test reproduces a fault for real (a subprocess killed with SIGKILL, a real SIGTERM, real broken files)
and checks the outcome. The counts are summarised in README's reliability section.
"""

import dataclasses
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from relpos.checkpoint import CheckpointError, load_checkpoint
from relpos.data import ImageError, load_rgb
from relpos.training import NonFiniteLoss, train

from training_helpers import small_photo_folder, tiny_config

WRAPPERS = Path(__file__).parent / "wrappers"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_photo_folder(tmp_path_factory.mktemp("photos"))


# The jigsaw geometry of the tiny runs: 40-px tiles (the caffenet tower needs 36+), a 3x3 grid fits the photos.
JIGSAW = ("--task", "jigsaw", "--permutations", "12", "--patch", "40", "--gap", "4", "--jitter", "2", "--batch", "72",
          "--min-pixels", "45000", "--max-pixels", "60000")


def _train_command(photos, out, steps, extra=()):
    return [sys.executable, "-m", "relpos.cli", "train", "--data", str(photos), "--out", str(out), "--steps", str(steps),
            "--batch", "48", "--width", "0.125", "--workers", "0", "--patch", "48", "--gap", "24", "--jitter", "3",
            "--min-pixels", "30000", "--max-pixels", "50000", "--eval-every", "100", "--eval-plans", "1",
            "--checkpoint-every", "1", "--log-every", "1", "--seed", "3", "--lr", "2e-3", "--warmup", "2",
            "--no-progress", "--device", "cpu", *extra]  # later options win: extra may set the task's own


def _steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=0)


def _start(command, env=None):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _wait_for_step(process, out, step, timeout=240):
    deadline = time.time() + timeout
    while _steps_logged(out) < step:
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline, "training did not reach the step in time"
        time.sleep(0.05)


def _final_weights(out):
    return load_checkpoint(out / "checkpoint.pt")["model"]


@pytest.fixture(scope="module")
def uninterrupted(photos, tmp_path_factory):
    """The final weights of an uninterrupted 8-step run, per task (run once, on first use)."""
    weights = {}

    def of(task_options):
        if task_options not in weights:
            out = tmp_path_factory.mktemp("straight")
            result = subprocess.run(_train_command(photos, out, 8, task_options), capture_output=True, text=True,
                                    timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert result.returncode == 0, result.stderr[-2000:]
            weights[task_options] = _final_weights(out)
        return weights[task_options]

    return of


@pytest.mark.parametrize("task_options,during_checkpoint_write", [((), False), ((), True), (JIGSAW, False)],
                         ids=["relpos-between-steps", "relpos-mid-checkpoint-write", "jigsaw-between-steps"])
def test_sigkill_then_resume_reaches_the_same_weights(photos, tmp_path, uninterrupted, task_options,
                                                      during_checkpoint_write):
    out = tmp_path / "killed"
    kill_at = random.randint(2, 6)
    command = _train_command(photos, out, 8, task_options)
    if during_checkpoint_write:  # the same run through a wrapper whose checkpoint writes pause half-way for 3 s
        command = [sys.executable, str(WRAPPERS / "slow_checkpoint_write.py"), "3", *command[3:]]
    process = _start(command)
    _wait_for_step(process, out, kill_at)
    if during_checkpoint_write:  # the step is logged, then its checkpoint written: kill inside the 3 s window
        deadline = time.time() + 30
        while not list(out.glob(".checkpoint.pt.tmp-*")):
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "checkpoint.pt")  # whatever is there is complete and readable
    assert 1 <= state["step"] <= 8
    resumed = subprocess.run(_train_command(photos, out, 8, (*task_options, "--resume")), capture_output=True,
                             text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(out.glob(".checkpoint.pt.tmp-*"))
    final = _final_weights(out)
    for name, tensor in uninterrupted(tuple(task_options)).items():
        assert torch.equal(final[name], tensor), name


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_save_and_exit_zero(photos, tmp_path, signal_number):
    out = tmp_path / "signalled"
    process = _start(_train_command(photos, out, 200))
    _wait_for_step(process, out, 2)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "checkpoint saved" in stdout and "--resume" in stdout
    state = load_checkpoint(out / "checkpoint.pt")
    assert 2 <= state["step"] < 200


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decompression bomb) with no real pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
                     + chunk(b"IEND", b""))


def _odd_images(folder: Path, source: Path) -> dict:
    """Every kind of odd file; returns name -> expected ('ok' or 'skip')."""
    base = Image.open(source).convert("RGB").resize((200, 160))
    expected = {}

    def save(name, image, ok=True, **kwargs):
        image.save(folder / name, **kwargs)
        expected[name] = "ok" if ok else "skip"

    save("gray.png", base.convert("L"))
    save("rgba.png", base.convert("RGBA"))
    save("palette.png", base.convert("P"))
    save("cmyk.jpg", base.convert("CMYK"))
    save("sixteen_bit.png", base.convert("L").point(lambda v: v * 256, "I").convert("I;16"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    save("exif_rotated.jpg", base, exif=exif.tobytes())
    save("thin.png", base.resize((400, 10)), ok=False)  # too thin for one pair at any scale
    save("pixel.png", base.resize((1, 1)), ok=False)  # would be enlarged ~190x: nothing to learn from
    save("icon.png", base.resize((32, 32)), ok=False)  # ~5.4x
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello, I am not an image")
    good = (folder / "gray.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = folder / "corrupt.jpg"
    base.save(jpeg, quality=90)
    data = bytearray(jpeg.read_bytes())
    noise = random.Random(0).randbytes(400).replace(b"\xff", b"\x00")  # no stray markers: fixed, reproducible damage
    data[len(data) // 3 : len(data) // 3 + 400] = noise
    jpeg.write_bytes(bytes(data[: len(data) * 2 // 3]))
    _png_header_only(folder / "bomb.png", 40_000, 30_000)
    expected.update({"zero.jpg": "skip", "text.jpg": "skip", "truncated.png": "skip", "corrupt.jpg": "skip",
                     "bomb.png": "skip"})
    return expected


def test_odd_files_are_converted_or_skipped_with_reasons(photos, tmp_path):
    data = small_photo_folder(tmp_path / "data", count=4)
    expected = _odd_images(data, next(photos.rglob("*.png")))
    out = tmp_path / "out"
    summary = train(tiny_config(data, out, steps=10, holdout=0.0, batch=400))
    skipped = {Path(json.loads(line)["path"]).name: json.loads(line)["reason"]
               for line in (out / "skipped.jsonl").read_text().splitlines()}
    should_skip = {name for name, outcome in expected.items() if outcome == "skip"}
    assert set(skipped) == should_skip, skipped
    assert "too large" in skipped["bomb.png"] and "not larger than the pair footprint" in skipped["thin.png"]
    assert "(at most 4x)" in skipped["pixel.png"] and "(at most 4x)" in skipped["icon.png"]
    assert summary["skipped_files"] == len(should_skip)


def test_odd_modes_decode_to_rgb(tmp_path, photos):
    expected = _odd_images(tmp_path, next(photos.rglob("*.png")))
    for name, outcome in expected.items():
        if outcome == "ok":
            image = load_rgb(tmp_path / name)
            assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    assert tuple(load_rgb(tmp_path / "exif_rotated.jpg").shape[:2]) == (200, 160)  # rotated upright
    assert tuple(load_rgb(tmp_path / "gray.png").shape[:2]) == (160, 200)
    sixteen = load_rgb(tmp_path / "sixteen_bit.png")
    assert int(sixteen.max()) > 100  # rescaled from 16 bits, not clipped to white or black
    for name in ("zero.jpg", "text.jpg", "truncated.png", "corrupt.jpg", "bomb.png"):
        with pytest.raises(ImageError, match=name):
            load_rgb(tmp_path / name)


def test_float_images_with_nan_and_the_pixel_limit(tmp_path):
    import numpy as np

    values = np.linspace(0, 10, 40 * 30, dtype=np.float32).reshape(30, 40)
    values[0, :5] = np.nan
    values[1, :5] = np.inf
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    image = load_rgb(tmp_path / "float.tif")
    assert int(image[0, :5].max()) == 0 and int(image[-1, -1, 0]) == 255 and int(image[15, 20, 0]) > 100
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32), mode="F").save(tmp_path / "all_nan.tif")
    with pytest.raises(ImageError, match="all_nan.tif.*no finite"):
        load_rgb(tmp_path / "all_nan.tif")
    # between PIL's warning (89.5M pixels) and relpos' limit (120M) an image is refused only by max_pixels
    _png_header_only(tmp_path / "large.png", 10_000, 9_500)  # 95M pixels, header only: decoding fails later
    with pytest.raises(ImageError, match="cannot decode"):
        load_rgb(tmp_path / "large.png")
    with pytest.raises(ImageError, match="too large"):
        load_rgb(tmp_path / "large.png", max_pixels=90_000_000)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path):
    """`relpos show FIFO` hung in open() until killed (hostile-input battery), a link to /dev/zero would be read
    forever; both are refused, as is a folder named like a picture, by the PIL path and by the raw reader of
    `--decode gpu` (whose worker's open() still blocked on a FIFO). The alarm turns a hang into a failure."""
    from relpos.data.gpu_decode import RawFiles

    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "folder.jpg").mkdir()
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("a reader blocked"))
    signal.alarm(20)
    try:
        for name in ("fifo.jpg", "zero.jpg", "folder.jpg"):
            with pytest.raises(ImageError, match=f"{name}: not a regular file"):
                load_rgb(tmp_path / name)
            _, reason = RawFiles([tmp_path / name])[0]
            assert reason == f"{tmp_path / name}: not a regular file"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_hashing_training_files_refuses_a_fifo_swapped_in_after_the_listing(tmp_path, caplog, monkeypatch):
    """The run summary's contents digest and `relpos eval --labelled`'s list of pretraining photographs hash files
    listed earlier: a FIFO put in a listed file's place blocked the plain open() for ever, and a listed file that
    could not be read stopped the evaluation. Both now count it as unreadable, name it, and go on."""
    import relpos.data
    from relpos.data import contents_digest, file_sha256
    from relpos.regular_files import FileRefused
    from relpos.labelled import pretraining_hashes

    data = tmp_path / "data"
    data.mkdir()
    for index in range(4):
        Image.new("RGB", (64, 64), (index * 60, 0, 0)).save(data / f"p{index}.png")
    listed = sorted(data.iterdir())
    good = {file_sha256(path) for path in listed[1:]}
    monkeypatch.setattr(relpos.data, "list_images", lambda root: list(listed))  # the listing from before the swap
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("hashing blocked on a FIFO"))
    signal.alarm(20)
    try:
        listed[0].unlink()
        os.mkfifo(listed[0])
        with pytest.raises(FileRefused, match="not a regular file"):
            file_sha256(listed[0])
        assert contents_digest(listed) == contents_digest(listed[1:] + [tmp_path / "gone" / listed[0].name])
        unreadable = []
        with caplog.at_level("WARNING", logger="relpos.labelled"):
            hashes = pretraining_hashes({"data": str(data), "holdout": 0.0}, unreadable)
        assert hashes == good and unreadable == [str(listed[0])]
        assert "cannot hash the pretraining photograph" in caplog.text and listed[0].name in caplog.text
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_name_with_a_nul_byte_is_an_image_error_not_a_bare_value_error(tmp_path):
    """os.open raises ValueError("embedded null byte"), which callers that catch ImageError let through."""
    with pytest.raises(ImageError, match="NUL byte"):
        load_rgb(str(tmp_path / "a\0b.jpg"))


def test_a_picture_in_a_format_that_runs_an_interpreter_is_never_opened(tmp_path, monkeypatch):
    """A user's "photo.jpg" holding EPS: PIL, left to guess the format, identifies EPS and hands it to Ghostscript,
    an interpreter (and a history of exploits). load_rgb asks PIL for raster photo formats only."""
    from PIL import EpsImagePlugin

    called = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: called.append(a))
    eps = tmp_path / "photo.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n0 0 moveto 32 32 lineto stroke\n%%EOF\n")
    with Image.open(eps) as image:  # what PIL alone makes of it
        assert image.format == "EPS"
    with pytest.raises(ImageError, match="photo.jpg"):
        load_rgb(eps)
    assert not called


def test_python_dash_m_relpos_is_the_command():
    result = subprocess.run([sys.executable, "-m", "relpos", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: relpos" in result.stdout


@pytest.mark.parametrize("field,value", [("jitter", float("nan")), ("patch", 96.5), ("gap", True),
                                         ("min_pixels", 1.5e5)])
def test_patch_config_takes_integers_only(field, value):
    import relpos

    with pytest.raises(ValueError, match=f"PatchConfig.{field} must be an integer"):
        relpos.PatchConfig(**{field: value})


def _poison_loss(monkeypatch, poisoned_steps, where: str = "loss") -> None:
    """Training steps (0-based) in `poisoned_steps` get a NaN loss, as a diverging run would; with where="patches"
    the NaN is put in the step's first patch instead, so it also reaches the activations (and BatchNorm)."""
    from relpos.train import loop

    real, calls = loop.compute_loss, [0]

    def poisoned(model, patches, *args, **kwargs):
        poison = torch.is_grad_enabled() and calls[0] in poisoned_steps  # a training step, not the evaluation
        calls[0] += torch.is_grad_enabled()
        if poison and where == "patches":
            patches = patches.clone()
            patches[0] = float("nan")
        loss, correct, logits = real(model, patches, *args, **kwargs)
        return (loss * float("nan") if poison and where == "loss" else loss), correct, logits

    monkeypatch.setattr(loop, "compute_loss", poisoned)


def test_nan_loss_is_skipped_then_training_continues(photos, tmp_path, caplog, monkeypatch):
    _poison_loss(monkeypatch, {2})
    summary = train(tiny_config(photos, tmp_path / "nan", steps=5))
    assert "skipping the update" in caplog.text
    state = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert summary["step"] == 5 and all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("where", ["loss", "patches"])
def test_a_skipped_step_changes_no_weight_or_statistic(photos, tmp_path, caplog, monkeypatch, where):
    # A NaN that reaches the activations (not only the loss) also reaches BatchNorm's running statistics, which the
    # forward updates whether or not the step is then skipped: the skipped step must leave the model exactly as the
    # step before left it (statistics and their batch count too), and the run go on with finite checkpoints.
    before = load_checkpoint(_checkpoint_after(photos, tmp_path / "before", stop_after=2))["model"]
    _poison_loss(monkeypatch, {2}, where=where)  # the third step
    skipped = load_checkpoint(_checkpoint_after(photos, tmp_path / "skipped", stop_after=3))["model"]
    assert "step 3: loss nan" in caplog.text and "putting back BatchNorm's running statistics" in caplog.text
    assert before.keys() == skipped.keys() and any("running_var" in name for name in before)
    for name, tensor in before.items():
        assert torch.equal(skipped[name], tensor), f"{name}: the skipped step changed it"
    summary = train(tiny_config(photos, tmp_path / "skipped", steps=5, checkpoint_every=1, resume=True))
    state = load_checkpoint(tmp_path / "skipped" / "checkpoint.pt")
    assert summary["step"] == 5
    for name, tensor in state["model"].items():
        assert not tensor.is_floating_point() or torch.isfinite(tensor).all(), name


def test_a_run_with_a_skipped_step_resumes_to_the_same_weights(photos, tmp_path, monkeypatch, caplog):
    """Stopped before a NaN step and resumed, a run ends as the uninterrupted one does: the skipped step puts back the
    statistics it found, whatever checkpoint came before it."""
    with monkeypatch.context() as patched:
        _poison_loss(patched, {4}, where="patches")  # the fifth step; checkpoints at 3 and 6
        train(tiny_config(photos, tmp_path / "straight"))
    assert caplog.text.count("step 5: loss nan") == 1
    train(tiny_config(photos, tmp_path / "halves", stop_after=4))  # stopped after the fourth: a checkpoint there
    _poison_loss(monkeypatch, {0}, where="patches")  # the resumed run's first step is the fifth
    train(tiny_config(photos, tmp_path / "halves", resume=True))
    assert caplog.text.count("step 5: loss nan") == 2  # skipped in both runs
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    halves = load_checkpoint(tmp_path / "halves" / "checkpoint.pt")["model"]
    for name, tensor in straight.items():
        assert torch.equal(halves[name], tensor), name


def _checkpoint_after(photos, out, stop_after):
    train(tiny_config(photos, out, steps=5, checkpoint_every=1, stop_after=stop_after))
    assert load_checkpoint(out / "checkpoint.pt")["step"] == stop_after
    return out / "checkpoint.pt"


def test_repeated_nan_stops_without_a_poisoned_checkpoint(photos, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    train(tiny_config(photos, out, stop_after=3))
    good = load_checkpoint(out / "checkpoint.pt")["model"]
    _poison_loss(monkeypatch, range(100))  # every step of the resumed run diverges
    with pytest.raises(NonFiniteLoss, match=r"not finite for 2 steps in a row \(last at step 5\)"):
        # a checkpoint after every step: an update taken on a NaN loss would be saved at step 4
        train(tiny_config(photos, out, resume=True, checkpoint_every=1, max_nonfinite=2))
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 4  # the first poisoned step was written (skipped), the second stopped the run
    for name, tensor in state["model"].items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, good[name]), f"{name}: a skipped step changed it"


def test_missing_extension_falls_back_with_a_clear_message(tmp_path):
    code = (
        "import sys; sys.modules['relpos._C'] = None\n"  # the extension cannot be imported, as when never built
        "import warnings, torch, relpos\n"
        "img=[torch.randint(0,256,(300,400,3),dtype=torch.uint8)]\n"
        "plan=relpos.sample_plan([[300,400]], seed=0)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out=relpos.extract_patches(img, plan)\n"
        "print('fallback-ok', out.shape[0]==plan.num_patches, any('reference' in str(x.message) for x in w))\n"
        "try:\n"
        "    relpos.extract_patches(img, plan, backend='cpu')\n"
        "except RuntimeError as e:\n"
        "    print('error:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "fallback-ok True True" in result.stdout, result.stderr[-2000:]
    assert "pip install --no-build-isolation" in result.stdout


@pytest.mark.parametrize("damage", ["truncated", "random-bytes", "foreign-dict", "empty", "nan-weights",
                                    "args-not-a-dict", "model-a-list", "negative-step"])
def test_corrupt_or_foreign_checkpoints_give_a_clear_error(photos, tmp_path, damage, capsys):
    out = tmp_path / "run"
    train(tiny_config(photos, out, steps=2))
    path = out / "checkpoint.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif damage == "random-bytes":
        path.write_bytes(os.urandom(5000))
    elif damage == "foreign-dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a file with relpos's marker whose contents are wrong: a clear error, not a traceback or NaN figures
        state = load_checkpoint(path)
        if damage == "nan-weights":
            next(value for value in state["model"].values() if value.is_floating_point())[0] = float("nan")
        elif damage == "args-not-a-dict":
            state["args"] = "caffenet"
        elif damage == "model-a-list":
            state["model"] = list(state["model"].values())
        else:
            state["step"] = -3
        torch.save(state, path)
    with pytest.raises(CheckpointError, match="checkpoint"):
        train(tiny_config(photos, out, steps=4, resume=True))
    from relpos.cli import main

    assert main(["eval", str(path), "--out", str(tmp_path / "eval")]) == 1
    assert "checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fifo", "folder", "missing"])
def test_a_checkpoint_path_that_is_no_file_is_refused_without_blocking(tmp_path, kind):
    """A FIFO would block a reader that opens it plainly (the test would hang), a folder is no archive: each is a
    CheckpointError naming the path and why, for a checkpoint and an exported tower alike."""
    from relpos.export import load_tower

    path = tmp_path / "checkpoint.pt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    reason = "does not exist" if kind == "missing" else "is unreadable: not a regular file"
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))} {reason}"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"exported tower {re.escape(str(path))} {reason}"):
        load_tower(path)


def _rewrite(path: Path, compression: int) -> None:
    """The same members, written by Python's zipfile (no zip64 records: simple to patch)."""
    with zipfile.ZipFile(path) as archive:
        members = [(member.filename, archive.read(member)) for member in archive.infolist()]
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, payload in members:
            archive.writestr(name, payload)


def _declare_larger(path: Path, suffix: str, size: int) -> None:
    """Patch the central directory's uncompressed size of the member ending in `suffix` (a stored member)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_length = int.from_bytes(data[at + 28:at + 30], "little")
        if bytes(data[at + 46:at + 46 + name_length]).endswith(suffix.encode()):
            data[at + 24:at + 28] = size.to_bytes(4, "little")
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"no member ending in {suffix}")


def _share_payload(path: Path, name: str, copies: int) -> None:
    """Append `copies` central-directory entries (names ending a, b, ...) pointing at the stored payload of member
    `name`: each reads as a valid member, and torch would allocate every one a pickle asks for."""
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    entries = int.from_bytes(data[end + 10:end + 12], "little")
    directory_size = int.from_bytes(data[end + 12:end + 16], "little")
    directory_at = int.from_bytes(data[end + 16:end + 20], "little")
    at = data.find(b"PK\x01\x02", directory_at)
    while True:
        name_length, extra_length, comment_length = (int.from_bytes(data[at + o:at + o + 2], "little")
                                                     for o in (28, 30, 32))
        record = bytes(data[at:at + 46 + name_length + extra_length + comment_length])
        if record[46:46 + name_length] == name.encode():
            break
        at += len(record)
    added = b"".join(record[:46 + name_length - 1] + bytes([ord("a") + copy]) + record[46 + name_length:]
                     for copy in range(copies))
    trailer = bytearray(data[end:])
    trailer[8:10] = (entries + copies).to_bytes(2, "little")
    trailer[10:12] = (entries + copies).to_bytes(2, "little")
    trailer[12:16] = (directory_size + len(added)).to_bytes(4, "little")
    path.write_bytes(bytes(data[:end]) + added + bytes(trailer))


@pytest.mark.parametrize("damage,message", [("deflated", "member .* is compressed"),
                                            ("declared-larger", "member .* declares"),
                                            ("shared-payload", "its members declare .* in all")])
def test_an_archive_that_could_inflate_in_memory_is_refused_before_torch_reads_it(photos, tmp_path, damage, message,
                                                                                 monkeypatch):
    """torch.save never compresses; torch.load would inflate a compressed member (or allocate a member's declared
    size) whatever it costs, so a small crafted checkpoint or exported tower could ask for gigabytes."""
    from relpos import checkpoint as checkpoint_module
    from relpos.export import export_tower, load_tower

    out = tmp_path / "run"
    train(tiny_config(photos, out, steps=2))
    path = out / "checkpoint.pt"
    tower = export_tower(path, tmp_path / "tower.pt")
    load_tower(tower)  # both load before the damage
    for target in (path, tower):
        if damage == "deflated":
            _rewrite(target, zipfile.ZIP_DEFLATED)
        elif damage == "declared-larger":
            _declare_larger(target, "/data/0", 2**31)
        else:
            _rewrite(target, zipfile.ZIP_STORED)
            with zipfile.ZipFile(target) as archive:
                largest = max(archive.infolist(), key=lambda member: member.file_size)
            _share_payload(target, largest.filename, copies=target.stat().st_size // largest.file_size + 1)
    monkeypatch.setattr(checkpoint_module.torch, "load", lambda *args, **kwargs: pytest.fail("torch.load was called"))
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))}: {message}"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"exported tower {re.escape(str(tower))}: {message}"):
        load_tower(tower)


def test_unsupported_gpu_falls_back_with_a_clear_message(monkeypatch):
    """A GPU older than the kernel's build targets: auto falls back (with a warning), explicit cuda explains."""
    from relpos import backends

    monkeypatch.setattr(backends, "has_cuda_extension", lambda: True)
    monkeypatch.setattr(backends, "build_info", lambda: {"cuda_archs": "8.0;9.0;9.0+PTX"})  # setup.py's default
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    backends._warn_fallback_to.cache_clear()
    device = torch.device("cuda", 0)
    with pytest.warns(RuntimeWarning, match="built for compute capabilities 8.0;9.0;9.0.PTX"):
        assert backends.resolve("auto", device) in ("triton", "reference")
    with pytest.raises(RuntimeError, match='TORCH_CUDA_ARCH_LIST="6.1"'):
        backends.resolve("cuda", device)


@pytest.mark.parametrize("archs,capability,runs", [
    ("8.0;9.0;9.0+PTX", (8, 6), True),   # sm_80 machine code runs on 8.6
    ("8.0;9.0;9.0+PTX", (10, 0), True),  # PTX of 9.0 is compiled by the driver for 10.0
    ("8.0;9.0", (10, 0), False),         # no PTX: a newer major cannot run it
    ("8.6", (8, 0), False),              # built for 8.6 only: an A100 cannot run it
    ("7.5", (7, 5), True),               # a TORCH_CUDA_ARCH_LIST build for an older part is honoured
])
def test_cuda_capability_check_follows_the_build(monkeypatch, archs, capability, runs):
    from relpos import backends

    monkeypatch.setattr(backends, "build_info", lambda: {"cuda_archs": archs})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert (backends.cuda_unsupported_reason(torch.device("cuda", 0)) is None) == runs


def test_a_checkpoint_without_run_state_or_a_tower_export_mixup_gives_a_clear_error(photos, tmp_path):
    from relpos.export import export_tower, load_tower

    out = tmp_path / "run"
    config = tiny_config(photos, out, steps=2)
    train(config)
    path = out / "checkpoint.pt"
    with pytest.raises(CheckpointError, match="not a tower exported"):
        load_tower(path)  # a training checkpoint given where an export is expected
    exported = export_tower(path, tmp_path / "tower.pt")
    blob = torch.load(exported, weights_only=True)
    next(iter(blob["tower"].values())).view(-1)[0] = float("inf")
    torch.save(blob, exported)
    with pytest.raises(CheckpointError, match="not finite"):
        load_tower(exported)
    state = load_checkpoint(path)
    del state["rng"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="rng"):
        train(dataclasses.replace(config, steps=4, resume=True))


def test_weights_that_do_not_fit_the_checkpoints_own_options_are_refused_by_eval_and_export(photos, tmp_path, capsys):
    """Hostile-input battery: a checkpoint whose options claim another width (width 10 would have eval allocate
    25 GB before load_state_dict noticed) or whose weight has another shape; eval refuses it from a meta-device
    skeleton, and export no longer writes a tower that load_tower cannot rebuild."""
    from relpos.cli import main
    from relpos.export import export_tower

    out = tmp_path / "run"
    train(tiny_config(photos, out, steps=2))
    path = out / "checkpoint.pt"
    state = load_checkpoint(path)
    for damage in ("width", "shape"):
        broken = dict(state, args=dict(state["args"]), model=dict(state["model"]))
        if damage == "width":
            broken["args"]["width"] = 1.0  # the run's is 0.125 (1.0 is a real model: a regression costs little memory)
        else:
            name = next(k for k, v in broken["model"].items() if k.startswith("tower.") and v.ndim == 4)
            broken["model"][name] = torch.zeros(3, 3)
        torch.save(broken, tmp_path / f"{damage}.pt")
        assert main(["eval", str(tmp_path / f"{damage}.pt"), "--out", str(tmp_path / f"eval-{damage}")]) == 1
        assert "size mismatch" in capsys.readouterr().err
        with pytest.raises(CheckpointError, match="do not fit its own options"):
            export_tower(tmp_path / f"{damage}.pt", tmp_path / f"{damage}.safetensors")
        assert not (tmp_path / f"{damage}.safetensors").exists()


def test_foreign_lines_in_metrics_jsonl_are_skipped_not_fatal(tmp_path):
    """Hostile-input battery: a metrics.jsonl line that is JSON but not a record (`[1]`) made --resume, the summary
    and the curves call .get on a list (a traceback); such lines are skipped like a line cut by a kill."""
    from relpos.metrics import MetricsLog, plot_curves, read_metrics

    path = tmp_path / "metrics.jsonl"
    good = [{"kind": "train", "step": 1, "loss": 2.0, "accuracy": 0.2},
            {"kind": "eval", "step": 2, "accuracy": 0.3, "confusion": [[3, 1], [1, 3]]}]
    junk = ["[1]", '"text"', "null", '{"kind": "train", "step": "x"}', '{"kind": "train", "step": true}',
            '{"kind": "train"}', '{"kind": "train", "step": 3}', '{"kind": "eval", "step": 4, "accu']
    path.write_text("\n".join([json.dumps(good[0]), *junk[:4], json.dumps(good[1]), *junk[4:]]) + "\n")
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3]  # the step-3 record lacks loss: kept, drawn as a gap
    plot_curves(path, tmp_path / "curves.png", "relpos")
    assert (tmp_path / "curves.png").stat().st_size > 0
    MetricsLog(path, truncate_after_step=2)  # what --resume does
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_resume_refuses_a_checkpoint_past_steps_or_with_a_damaged_task(photos, tmp_path):
    """Hostile-input review: --resume took a checkpoint at step 10**12 with --steps 3 (logging "steps
    1000000000000->3", then a summary saying step 3), and a pretext entry ["a"] gave "list indices must be integers"
    without naming the file."""
    out = tmp_path / "run"
    config = tiny_config(photos, out, steps=2)
    train(config)
    path = out / "checkpoint.pt"
    state = load_checkpoint(path)
    torch.save(dict(state, step=10**12), path)  # --steps cannot change on resume; the step in the file can
    with pytest.raises(CheckpointError, match=r"at step 1000000000000, past --steps 2: pass --steps 1000000000000"):
        train(dataclasses.replace(config, resume=True))
    torch.save(dict(state, pretext=["a"]), path)
    with pytest.raises(CheckpointError, match=f"{path.name} has a damaged pretext task"):
        train(dataclasses.replace(config, resume=True))
