"""`relpos eval`: how good is a pretrained tower on tasks it was not trained for.

Two labelled sets that need no network (both built from images that ship inside scikit-image):
- "photo-regions": 96-px crops of 8 photographs, the label is the photograph (textures and materials:
  brick, grass, gravel, coins, moon, cells, ...); training crops come from the top half, test crops from the
  bottom half, so no test pixel was seen by the probe.
- "faces": scikit-image's LFW subset, 100 face and 100 non-face 25x25 crops (label face / not face),
  upsampled to 96 px by the fused op; even items train, odd items test.
Each is measured with a linear probe and k-NN, for the pretrained tower and for a randomly initialised tower of
the same architecture. photo-regions is repeated over several draws of its crops (a real source of spread); faces
has one fixed split and a deterministic probe, so it is measured once (repeating it would show a spread of 0).
With `--labelled DIR` (a folder made by `relpos data photos`), the cross-validated evaluation of
`relpos.labelled` runs too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint
from .cli_types import HelpFormatter, bounded_int, device_text
from .data import bundled_photos, load_rgb
from .metrics import format_pretext, pretext_summary, strict_json
from .models import build_tower, check_fits
from .ops import extract_patches
from .plan import Plan
from .pretext import evaluate
from .train.config import pretext_from_checkpoint
from .probe import knn_accuracy, linear_probe
from .devices import resolve_device
from .run_folder import claim_run_folder

log = logging.getLogger("relpos.eval")

REGION_PHOTOS = ("brick.png", "grass.png", "gravel.png", "coins.png", "moon.png", "ihc.png", "hubble_deep_field.jpg",
                 "cell.png")


def _crop_plan(sizes: list[tuple[int, int]], rows: list[tuple[int, int, int, int, int]], patch: int) -> Plan:
    """A plan of plain crops: rows of (image, resized height, resized width, top, left), no augmentation."""
    patches = torch.tensor([[i, h, w, t, l, 0, 0] for i, h, w, t, l in rows], dtype=torch.int32).reshape(-1, 7)
    return Plan(patches=patches, pairs=torch.zeros((0, 2), dtype=torch.int64), labels=torch.zeros(0, dtype=torch.int64),
                seed=0, patch_size=patch, image_sizes=torch.tensor(sizes, dtype=torch.int64))


def photo_regions(patch: int, per_class: int, seed: int):
    """(images, plan_train, y_train, plan_test, y_test, class names) of the photo-regions set."""
    folder = bundled_photos()[0].parent
    names = [name for name in REGION_PHOTOS if (folder / name).is_file()]
    images = [load_rgb(folder / name) for name in names]
    sizes = [tuple(image.shape[:2]) for image in images]
    generator = torch.Generator().manual_seed(seed)
    splits = {"train": ([], []), "test": ([], [])}
    for label, (h, w) in enumerate(sizes):
        half = h // 2
        for split, (low, high) in (("train", (0, half - patch)), ("test", (half, h - patch))):
            tops = torch.randint(low, max(low, high) + 1, (per_class,), generator=generator)
            lefts = torch.randint(0, w - patch + 1, (per_class,), generator=generator)
            for top, left in zip(tops.tolist(), lefts.tolist()):
                splits[split][0].append((label, h, w, top, left))
                splits[split][1].append(label)
    train_plan = _crop_plan(sizes, splits["train"][0], patch)
    test_plan = _crop_plan(sizes, splits["test"][0], patch)
    return (images, train_plan, torch.tensor(splits["train"][1]), test_plan, torch.tensor(splits["test"][1]),
            [Path(n).stem for n in names])


def faces(patch: int):
    """The LFW subset of scikit-image: 200 grayscale 25x25 crops, first 100 faces, last 100 not."""
    array = np.load(bundled_photos()[0].parent / "lfw_subset.npy")
    gray = torch.from_numpy((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
    images = [img[..., None].expand(-1, -1, 3).contiguous() for img in gray]
    labels = torch.tensor([1] * 100 + [0] * 100)
    sizes = [tuple(img.shape[:2]) for img in images]
    rows = [(i, patch, patch, 0, 0) for i in range(len(images))]  # resize each 25x25 crop to the patch size
    train = list(range(0, 200, 2))
    test = list(range(1, 200, 2))
    plan_train = _crop_plan(sizes, [rows[i] for i in train], patch)
    plan_test = _crop_plan(sizes, [rows[i] for i in test], patch)
    return images, plan_train, labels[train], plan_test, labels[test], ["not face", "face"]


@torch.no_grad()
def features(tower, images, plan: Plan, layer: str, device, batch: int = 128, desc: str = "features") -> torch.Tensor:
    from tqdm.auto import tqdm

    patches = extract_patches(images, plan, color="none", channels_last=True)
    chunks = []
    for start in tqdm(range(0, patches.shape[0], batch), desc=desc, leave=False, disable=None):
        chunks.append(tower.pooled(patches[start : start + batch].to(device), layer).float().cpu())
    return torch.cat(chunks)


def load_towers(checkpoint: str | os.PathLike, device, random_seed: int = 12345):
    state = load_checkpoint(checkpoint)
    args = state["args"]
    try:
        pretext = pretext_from_checkpoint(state)
        check_fits(lambda: pretext.build_model(args["arch"], args["width"]), state["model"])  # before allocating
        model = pretext.build_model(args["arch"], args["width"])
        model.load_state_dict(state["model"])
        torch.manual_seed(random_seed)
        random_tower = build_tower(args["arch"], args["width"], args["patch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # options or weights of another shape
        raise CheckpointError(f"checkpoint {checkpoint} does not describe a model relpos can build: "
                              f"{type(error).__name__}: {error}") from error
    return state, model.to(device).eval(), model.tower.to(device).eval(), random_tower.to(device).eval()


def run_eval(checkpoint: str, out: str, layer: str = "conv5", draws: int = 3, per_class: int = 60, k: int = 5,
             device: str = "auto", retrieval_data: str | None = None, queries: int = 6,
             labelled: str | None = None, random_seeds: int = 3, folds: int = 5, min_per_class: int = 15) -> dict:
    device = resolve_device(device)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    state, model, pretrained, random_tower = load_towers(checkpoint, device)
    # every folder this evaluation will read is checked before the long probes run, not after them
    for what, folder in (("the checkpoint's training data (for the held-out pretext accuracy)", state["args"].get("data")),
                         ("--data", retrieval_data), ("--labelled", labelled)):
        if folder and not Path(folder).exists():
            raise FileNotFoundError(f"{what}: {folder} does not exist")
    # decoded now, not after the probes: a folder with nothing usable fails before the long work, not after it
    retrieval_images = _retrieval_images(retrieval_data)
    patch = state["args"]["patch"]
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    results = {"checkpoint": str(checkpoint), "step": state["step"], "layer": layer, "tasks": {}}
    for task in ("photo-regions", "faces"):
        rows = {}
        # only photo-regions has something to repeat (fresh crops per draw); faces is one fixed split
        repeats = draws if task == "photo-regions" else 1
        for name, tower in (("pretrained", pretrained), ("random", random_tower)):
            probe_scores, knn_scores = [], []
            for draw in range(repeats):
                if task == "photo-regions":
                    images, p_train, y_train, p_test, y_test, classes = photo_regions(patch, per_class, draw)
                else:
                    images, p_train, y_train, p_test, y_test, classes = faces(patch)
                x_train = features(tower, images, p_train, layer, device, desc=f"{task} {name} train")
                x_test = features(tower, images, p_test, layer, device, desc=f"{task} {name} test")
                probe_scores.append(linear_probe(x_train, y_train, x_test, y_test, len(classes)))
                knn_scores.append(knn_accuracy(x_train, y_train, x_test, y_test, len(classes), k=k))
            counts = torch.bincount(y_test, minlength=len(classes))
            rows[name] = {"linear_probe": float(np.mean(probe_scores)), "knn": float(np.mean(knn_scores)),
                          "draws": repeats, "classes": len(classes), "test_items": int(len(y_test)),
                          "majority": float(counts.max()) / int(len(y_test))}
            if repeats > 1:  # spread over independent crop draws (standard deviation, not a standard error)
                rows[name]["linear_probe_std"] = float(np.std(probe_scores))
                rows[name]["knn_std"] = float(np.std(knn_scores))
        results["tasks"][task] = rows
    results["pretext"] = _pretext(state, model, device, out_dir)
    if labelled:
        from .labelled import evaluate_labelled

        results["labelled"] = evaluate_labelled(labelled, state, device, random_seeds=random_seeds, folds=folds, k=k,
                                                min_per_class=min_per_class)
    _pictures(state, pretrained, random_tower, device, out_dir, retrieval_images, queries, layer)
    atomic_write_bytes(out_dir / "eval.json", strict_json(results, indent=2).encode())
    return results


def _pretext(state, model, device, out_dir: Path) -> dict:
    from .data import iter_decodable_images, list_images, split_holdout

    args = state["args"]
    pretext = pretext_from_checkpoint(state)
    paths = list_images(args["data"]) if args.get("data") else bundled_photos()
    _, held = split_holdout(paths, args["holdout"] if args["holdout"] > 0 else 0.2)
    decoded = []  # counts the images as they stream from disk (held-out sets can be large)

    def stream():
        for image in iter_decodable_images(held):
            decoded.append(None)
            yield image

    _, confusion = evaluate(model, pretext, stream(), device, color=args["color"], backend="auto", plans=8)
    summary = pretext_summary(confusion)
    _plot_confusion(confusion, out_dir / "confusion.png", summary, pretext.class_names)
    return {"task": pretext.name, "held_out_images": len(decoded), **summary, "confusion": confusion.tolist()}


def _plot_confusion(confusion: torch.Tensor, path: Path, summary: dict, names: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .show import save_atomically

    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1)
    figure, axis = plt.subplots(figsize=(6.5, 5.5))
    image = axis.imshow(rates.numpy(), cmap="viridis", vmin=0, vmax=1)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if len(names) <= 12:  # a few classes: named, with their rates written in (jigsaw's K permutations: colour only)
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axis.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                axis.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if rates[i, j] < 0.5 else "black")
    figure.colorbar(image, ax=axis)
    axis.set_title(f"held-out pretext accuracy {summary['accuracy']:.3f} ± {summary['stderr']:.3f}\n"
                   f"majority label {summary['majority']:.3f}, balanced accuracy {summary['balanced_accuracy']:.3f}",
                   fontsize=10)
    save_atomically(figure, str(path))


def _retrieval_images(data: str | None) -> list[torch.Tensor]:
    """The images of --data (default: the bundled photographs) that decode; bad files are named in the log."""
    from .data import decodable_images, list_images

    paths = list_images(data) if data else bundled_photos()
    failures = []
    images = decodable_images(paths, failures)
    for _, reason in failures:
        log.warning("--data: leaving out %s", reason)  # the reason names the file
    if len(images) < 2:
        raise ValueError(f"--data {data}: {len(images)} of {len(paths)} image files decode; the nearest-neighbour "
                         "figure needs at least 2 images")
    return images


def _pictures(state, pretrained, random_tower, device, out_dir: Path, images: list, queries: int, layer: str):
    from .show import draw_grids

    args = state["args"]
    pretext = pretext_from_checkpoint(state)
    first = images[0]
    plan = pretext.draw([first.shape[:2]], seed=0)
    if plan.num_pairs:
        draw_grids(first, plan, 0, str(out_dir / "grids.png"))
        pretext.draw_examples(extract_patches([first], plan, color=args["color"]), plan,
                              str(out_dir / f"{pretext.item_name}s.png"), count=16, seed=0)
    retrieval(images, pretext.config, pretrained, random_tower, device, out_dir / "neighbours.png", queries, layer)


@torch.no_grad()
def retrieval(images, config, pretrained, random_tower, device, path: Path, queries: int = 6, layer: str = "conv5",
              k: int = 4, seed: int = 0) -> bool:
    """Query patches and their nearest neighbours (other images only) for the pretrained and the random tower.

    Shows at most as many neighbours as every query has patches from other photographs; returns False (figure not
    drawn, a warning logged) when the images give no patch with a neighbour in another photograph."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sampler import sample_plan
    from .show import _display, save_atomically

    sizes = [tuple(img.shape[:2]) for img in images]
    plan = sample_plan(sizes, config, seed=seed)
    plan.patches[:, 6] = 0  # no down-sampling: show the patches as they are
    owner = plan.patches[:, 0].long()
    # neighbours come from other photographs only: a query has at least this many to rank
    others = plan.num_patches - int(torch.bincount(owner).max()) if plan.num_patches else 0
    k = min(k, others)
    if k < 1:
        log.warning("nearest-neighbour figure not drawn: the %d images give %d patches of %d px, none with a "
                    "patch in another photograph to compare with", len(images), plan.num_patches, config.patch)
        return False
    patches = extract_patches(images, plan, color="none", channels_last=True)
    chosen = torch.randperm(plan.num_patches, generator=torch.Generator().manual_seed(seed))[:queries]
    neighbours = {}
    for name, tower in (("pretrained", pretrained), ("random", random_tower)):
        feats = torch.cat([tower.pooled(patches[s : s + 128].to(device), layer).float().cpu()
                           for s in range(0, plan.num_patches, 128)])
        feats = torch.nn.functional.normalize(feats - feats.mean(0), dim=1)
        similarity = feats[chosen] @ feats.T
        similarity[owner[chosen][:, None] == owner[None, :]] = -2  # only other photographs
        neighbours[name] = similarity.topk(k, dim=1).indices
    columns = 1 + 2 * k
    figure, axes = plt.subplots(len(chosen), columns, figsize=(1.3 * columns, 1.4 * len(chosen)), squeeze=False)
    for r, query in enumerate(chosen.tolist()):
        tiles = [query] + neighbours["pretrained"][r].tolist() + neighbours["random"][r].tolist()
        for c, index in enumerate(tiles):
            axis = axes[r, c]
            axis.imshow(_display(patches[index]).numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title("query" if c == 0 else ("pretrained" if c <= k else "random"), fontsize=8)
    figure.suptitle("nearest neighbours in feature space (other photographs only)")
    save_atomically(figure, str(path))
    return True


def format_table(results: dict) -> str:
    lines = [f"{'task':<15}{'tower':<12}{'linear probe':>16}{'k-NN':>16}{'majority':>10}"]
    for task, rows in results["tasks"].items():
        for name, row in rows.items():
            spread = "linear_probe_std" in row
            probe = f"{row['linear_probe']:.3f}" + (f"±{row['linear_probe_std']:.3f}" if spread else "")
            knn = f"{row['knn']:.3f}" + (f"±{row['knn_std']:.3f}" if spread else "")
            lines.append(f"{task:<15}{name:<12}{probe:>16}{knn:>16}{row['majority']:>10.3f}")
    lines.append("(± on photo-regions: standard deviation over draws of crops; faces: one fixed split)")
    pretext = results["pretext"]
    unit = "puzzles" if pretext.get("task") == "jigsaw" else "pairs"
    lines.append(f"held-out pretext ({pretext.get('task', 'relpos')}) on {pretext['held_out_images']} images: "
                 f"{format_pretext(pretext, unit)}")
    if "labelled" in results:
        from .labelled import format_labelled

        lines.append(format_labelled(results["labelled"]))
    return "\n".join(lines)


LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6")
LABELLED_DEFAULTS = {"random_seeds": 3, "folds": 5, "min_per_class": 15}
EVAL_FILES = ("eval.json", "confusion.png", "neighbours.png", "grids.png", "pairs.png", "puzzles.png")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "eval", help="linear probe, k-NN, pretext accuracy and pictures for a checkpoint",
        description="Freeze the tower of CHECKPOINT and measure it (linear probe, k-NN) on "
        "labelled sets that ship with scikit-image, beside a randomly initialised tower of the same "
        "architecture; also held-out pretext accuracy with its confusion matrix, and pictures.",
        formatter_class=HelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint (OUT/checkpoint.pt)")
    parser.add_argument("--out", default="eval", help="output folder (eval.json and PNGs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    parser.add_argument("--layer", default="conv5", choices=LAYERS, help="pooled layer (caffenet; resnet18 has one)")
    parser.add_argument("--draws", "--seeds", dest="draws", type=bounded_int(1, 100), default=3,
                        help="independent draws of photo-regions crops (each gets a fresh probe and k-NN)")
    parser.add_argument("--per-class", type=bounded_int(2, 10_000), default=60,
                        help="crops per class and split (photo-regions)")
    parser.add_argument("--k", type=bounded_int(1, 1000), default=5, help="neighbours for k-NN")
    parser.add_argument("--device", type=device_text, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data", default=None, help="folder for the nearest-neighbour figure (default: bundled)")
    parser.add_argument("--queries", type=bounded_int(1, 64), default=6,
                        help="query patches in the nearest-neighbour figure")
    parser.add_argument("--labelled", default=None, metavar="DIR",
                        help="also run the cross-validated labelled evaluation on DIR (made by `relpos data photos`)")
    parser.add_argument("--random-seeds", type=bounded_int(1, 100), default=LABELLED_DEFAULTS["random_seeds"],
                        help="random-init towers in the labelled evaluation (their spread is the noise floor)")
    parser.add_argument("--folds", type=bounded_int(2, 100), default=LABELLED_DEFAULTS["folds"],
                        help="cross-validation folds of the labelled evaluation")
    parser.add_argument("--min-per-class", type=bounded_int(2, 100_000), default=LABELLED_DEFAULTS["min_per_class"],
                        help="labelled evaluation: keep the classes with at least this many unseen photographs")
    parser.set_defaults(run=_run)


def _run(args) -> int:
    if args.labelled is None:  # options of the labelled evaluation mean nothing without it: say so
        for name, default in LABELLED_DEFAULTS.items():
            if getattr(args, name) != default:
                log.warning("--%s is ignored without --labelled", name.replace("_", "-"))
    if not Path(args.checkpoint).is_file():
        raise ValueError(f"checkpoint {args.checkpoint} is not a file")
    # checked before the long probes, and locked while they run: no evaluation overwrites another
    folder = claim_run_folder(args.out, overwrite=args.overwrite, can_resume=False, run_files=EVAL_FILES,
                              kind="eval")
    try:
        results = run_eval(args.checkpoint, args.out, args.layer, args.draws, args.per_class, args.k, args.device,
                           args.data, args.queries, args.labelled, args.random_seeds, args.folds,
                           args.min_per_class)
    finally:
        folder.release()
    print(format_table(results))
    examples = "puzzles.png" if results["pretext"]["task"] == "jigsaw" else "pairs.png"
    print(f"wrote {Path(args.out) / 'eval.json'}, confusion.png, neighbours.png, grids.png, {examples}")
    return 0
