"""Labelled evaluation on real photographs (a folder made by `relpos data photos`), with a protocol fixed in code.

The protocol, decided before any result was seen:
- photographs: the manifest's labelled rows, minus every photograph the checkpoint trained on (matched by
  sha256 against the training part of its data), minus the classes in EXCLUDED (gcompris' "others" is the
  distractor bin of its categorisation game, not a category); then only classes with at least `min_per_class`
  photographs.
- image embedding: each photograph resized to a short side of 192 px, covered by a centred grid of
  non-overlapping 96-px patches (2 x n), each patch through the frozen tower, the pooled features of a layer
  averaged over the grid (one 96-px patch per photo was measured to erase the difference between towers).
- every layer of the tower is reported (caffenet: conv1..conv5, fc6), not the best one.
- stratified k-fold cross-validation (fold assignment fixed by `split_seed`); per fold a linear probe
  (logistic regression) and a k-NN vote, fitted on the other folds; mean and standard error over folds, beside
  the majority-class rate of the same folds (the training folds' commonest class, scored on the test fold).
- towers: the pretrained one and `random_seeds` randomly initialised ones of the same architecture; the spread of
  the random towers is the noise floor a pretrained tower has to clear.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from .plan import Plan
from .probe import knn_accuracy, linear_probe

log = logging.getLogger("relpos.labelled")

EXCLUDED = ("others",)
SHORT_SIDE = 192
CAFFENET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6")


def grid_plan(sizes: list[tuple[int, int]], patch: int = 96, short_side: int = SHORT_SIDE) -> Plan:
    """Plain crops (no augmentation): every image resized to `short_side`, a centred grid of whole patches."""
    if short_side < patch:
        raise ValueError(f"short_side ({short_side}) must be at least the patch size ({patch})")
    rows = []
    for index, (height, width) in enumerate(sizes):
        scale = short_side / min(height, width)
        h, w = max(patch, round(height * scale)), max(patch, round(width * scale))
        across, down = w // patch, h // patch
        top0, left0 = (h - down * patch) // 2, (w - across * patch) // 2
        rows += [[index, h, w, top0 + r * patch, left0 + c * patch, 0, 0] for r in range(down) for c in range(across)]
    return Plan(patches=torch.tensor(rows, dtype=torch.int32).reshape(-1, 7),
                pairs=torch.zeros((0, 2), dtype=torch.int64), labels=torch.zeros(0, dtype=torch.int64), seed=0,
                patch_size=patch, image_sizes=torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2))


@torch.no_grad()
def embed(tower, images: list[torch.Tensor], layers: tuple[str, ...], device, patch: int = 96,
          short_side: int = SHORT_SIDE, batch: int = 64) -> dict[str, torch.Tensor]:
    """{layer: [images, features]}: a layer's pooled features averaged over each image's grid of patches."""
    from .ops import extract_patches

    plan = grid_plan([tuple(image.shape[:2]) for image in images], patch, short_side)
    owner = plan.patches[:, 0].long()
    counts = torch.bincount(owner, minlength=len(images)).double()[:, None]
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, plan.num_patches, batch):  # render a batch of patches at a time: bounded memory
        rows = plan.patches[start : start + batch]
        sub = Plan(patches=rows, pairs=plan.pairs, labels=plan.labels, seed=0, patch_size=patch,
                   image_sizes=plan.image_sizes)
        patches = extract_patches(images, sub, color="none", channels_last=True).to(device)
        for layer in layers:
            pooled = tower.pooled(patches, layer).double().cpu()
            if layer not in sums:
                sums[layer] = torch.zeros(len(images), pooled.shape[1], dtype=torch.float64)
            sums[layer].index_add_(0, owner[start : start + batch], pooled)
    return {layer: (total / counts).float() for layer, total in sums.items()}


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """Fold index of every item: each class shuffled (fixed seed) and dealt round-robin, so folds are balanced."""
    counts = torch.bincount(labels)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if int(counts[counts > 0].min()) < folds:
        raise ValueError(f"every class needs at least {folds} items for {folds}-fold cross-validation, "
                         f"got class sizes {counts.tolist()}")
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    offset = 0
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero()[:, 0]
        members = members[torch.randperm(len(members), generator=generator)]
        fold[members] = (torch.arange(len(members)) + offset) % folds
        offset += len(members)  # continue the deal where the last class stopped: fold sizes differ by at most 1
    return fold


def _mean_se(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else float("nan")
    return {"mean": float(array.mean()), "se": se}


def cross_validate(x: torch.Tensor, y: torch.Tensor, fold: torch.Tensor, k: int = 5) -> dict:
    """Linear probe, k-NN and majority-class accuracy per fold, as mean and standard error over folds."""
    classes = int(y.max()) + 1
    probe, knn, majority = [], [], []
    for f in torch.unique(fold).tolist():
        test, train = fold == f, fold != f
        probe.append(linear_probe(x[train], y[train], x[test], y[test], classes))
        knn.append(knn_accuracy(x[train], y[train], x[test], y[test], classes, k=k))
        commonest = int(torch.bincount(y[train], minlength=classes).argmax())
        majority.append(float((y[test] == commonest).double().mean()))
    return {"linear_probe": _mean_se(probe), "knn": _mean_se(knn), "majority": _mean_se(majority),
            "per_fold": {"linear_probe": probe, "knn": knn}}


def pretraining_hashes(args: dict, unreadable: list | None = None) -> set[str]:
    """sha256 of every photograph the checkpoint trained on (the training part of its data). A file that cannot be
    read now (gone, unreadable, no longer a regular file) is logged and appended to `unreadable` when given: it cannot
    be matched, and one bad file does not stop the evaluation."""
    from .data import bundled_photos, file_sha256, list_images, split_holdout
    from .regular_files import FileRefused

    paths = list_images(args["data"]) if args.get("data") else bundled_photos()
    train, _ = split_holdout(paths, args.get("holdout", 0.0) or 0.0)
    hashes = set()
    for path in train:
        try:
            hashes.add(file_sha256(path))
        except (OSError, FileRefused) as error:
            log.warning("labelled: cannot hash the pretraining photograph %s (%s): it cannot be told apart from the "
                        "labelled photographs", path, error)
            if unreadable is not None:
                unreadable.append(str(path))
    return hashes


def select(rows: list[dict], seen: set[str], min_per_class: int, excluded=EXCLUDED) -> tuple[list[dict], dict]:
    """The labelled rows the protocol keeps, and what it dropped and why."""
    labelled = [r for r in rows if r.get("label")]
    unseen = [r for r in labelled if r["sha256"] not in seen]
    kept = [r for r in unseen if r["label"] not in excluded]
    sizes: dict[str, int] = {}
    for row in kept:
        sizes[row["label"]] = sizes.get(row["label"], 0) + 1
    classes = sorted(label for label, n in sizes.items() if n >= min_per_class)
    chosen = [r for r in kept if r["label"] in classes]
    dropped = {"seen_in_pretraining": len(labelled) - len(unseen), "excluded_classes": list(excluded),
               "small_classes": {label: n for label, n in sizes.items() if n < min_per_class}}
    return chosen, dropped


def layers_of(tower) -> tuple[str, ...]:
    return CAFFENET_LAYERS if hasattr(tower, "fc6") else ("final",)


def evaluate_towers(images, labels: torch.Tensor, towers: dict, device, folds: int = 5, k: int = 5,
                    split_seed: int = 0, patch: int = 96) -> dict:
    """Cross-validated probe / k-NN / majority for every tower and layer on the same folds."""
    fold = stratified_folds(labels, folds, split_seed)
    results = {}
    for name, tower in towers.items():
        layers = layers_of(tower)
        embedded = embed(tower, images, layers, device, patch)
        results[name] = {layer: cross_validate(embedded[layer], labels, fold, k) for layer in layers}
        log.info("labelled: %s done", name)
    return {"folds": fold.tolist(), "towers": results}


def evaluate_labelled(folder: str, state: dict, device, random_seeds: int = 3, folds: int = 5, k: int = 5,
                      min_per_class: int = 15, split_seed: int = 0) -> dict:
    """The protocol above for a checkpoint's state on a `relpos data photos` folder."""
    from .data import ImageFiles
    from .data.photos import read_manifest
    from .models import build_tower
    from .train.config import pretext_from_checkpoint

    if random_seeds < 1:
        raise ValueError(f"random_seeds must be at least 1, got {random_seeds}")
    args = state["args"]
    unhashed: list[str] = []
    rows, seen = read_manifest(folder), pretraining_hashes(args, unhashed)
    candidates = select(rows, seen, min_per_class=1)[0]
    files = ImageFiles([row["path"] for row in candidates])  # a bad photograph is left out and named, not fatal
    undecodable, images = {}, {}
    for row, (path, image) in zip(candidates, (files[i] for i in range(len(files)))):
        if isinstance(image, torch.Tensor):
            images[path] = image
        else:
            undecodable[row["file"]] = image
            log.warning("labelled: leaving out %s", image)
    chosen, dropped = select([row for row in rows if row["file"] not in undecodable], seen, min_per_class)
    dropped["undecodable"] = undecodable
    classes = sorted({r["label"] for r in chosen})
    if len(classes) < 2:
        raise ValueError(f"{folder}: fewer than 2 classes with {min_per_class}+ photographs not seen in "
                         f"pretraining ({dropped})")
    images = [images[r["path"]] for r in chosen]
    labels = torch.tensor([classes.index(r["label"]) for r in chosen])
    model = pretext_from_checkpoint(state).build_model(args["arch"], args["width"])  # relpos or jigsaw
    model.load_state_dict(state["model"])
    towers = {"pretrained": model.tower.to(device).eval()}
    for seed in range(random_seeds):
        torch.manual_seed(seed)
        towers[f"random{seed}"] = build_tower(args["arch"], args["width"], args["patch"]).to(device).eval()
    results = evaluate_towers(images, labels, towers, device, folds, k, split_seed, args["patch"])
    results.update({"folder": str(folder), "classes": classes, "counts": torch.bincount(labels).tolist(),
                    "files": [r["file"] for r in chosen], "dropped": dropped, "short_side": SHORT_SIDE,
                    "unhashed_pretraining_files": unhashed,
                    "protocol": __doc__.split("The protocol")[1].strip()})
    return results


def format_labelled(results: dict) -> str:
    towers = results["towers"]
    randoms = [name for name in towers if name.startswith("random")]
    counts = ", ".join(f"{c} {n}" for c, n in zip(results["classes"], results["counts"]))
    lines = [f"labelled photos ({counts}; {len(set(results['folds']))}-fold CV, mean ± standard error over folds; "
             f"random init: mean of {len(randoms)} seeds, [min, max] over seeds)",
             f"{'layer':<8}{'majority':>14}{'probe pretrained':>19}{'probe random':>26}{'k-NN pretrained':>19}"
             f"{'k-NN random':>26}"]
    for layer, row in towers["pretrained"].items():
        cells = [f"{row['majority']['mean']:.3f}±{row['majority']['se']:.3f}"]
        for metric in ("linear_probe", "knn"):
            mine = row[metric]
            others = [towers[name][layer][metric]["mean"] for name in randoms]
            cells.append(f"{mine['mean']:.3f}±{mine['se']:.3f}")
            cells.append(f"{np.mean(others):.3f} [{min(others):.3f}, {max(others):.3f}]")
        lines.append(f"{layer:<8}{cells[0]:>14}{cells[1]:>19}{cells[2]:>26}{cells[3]:>19}{cells[4]:>26}")
    return "\n".join(lines)
