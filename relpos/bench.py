"""`relpos bench`: the data step per backend beside baselines, GPU bandwidth against a copy, the training step.

Timing: a warm-up run is excluded; each case runs `rounds` times over rotating input sets (so caches do not
flatter); CUDA work is timed with events, CPU work with perf_counter; the median is reported. Absolute CPU
times depend on the machine: compare the ratios, measured in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

from . import backends, extract_patches, pack_images, sample_plan
from .baselines import batched_torch, has_opencv, numpy_pil_pipeline, opencv_pipeline, per_sample_torch
from .cli_types import HelpFormatter, bounded_float, bounded_int, device_text
from .bench_cpu import DTYPES, cpu_op_detail, instructions_per_element
from .checkpoint import atomic_write_bytes
from .config import PatchConfig
from .devices import resolve_device
from .metrics import strict_json
from .timing import time_median

log = logging.getLogger("relpos.bench")


def environment(device: torch.device) -> dict:
    """What a saved result must record to be reproducible."""
    commit = os.environ.get("RELPOS_COMMIT")  # set where the tree is a copy whose .git may be stale (a lent GPU)
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                          cwd=Path(__file__).resolve().parent.parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": commit,
    }


def make_inputs(sets: int, images_per_set: int, config: PatchConfig, device: torch.device, seed: int,
                size_range=(300, 700)):
    """`sets` independent batches of random-sized uint8 photos-like images, packed on `device`, with plans."""
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(sets):
        images = []
        for _ in range(images_per_set):
            h, w = (int(v) for v in torch.randint(size_range[0], size_range[1], (2,), generator=generator))
            coarse = torch.rand((3, h // 32 + 2, w // 32 + 2), generator=generator)
            image = torch.nn.functional.interpolate(coarse[None], size=(h, w), mode="bilinear")[0]
            image = (image * 200 + 55 * torch.rand((3, h, w), generator=generator)).clamp(0, 255).to(torch.uint8)
            images.append(image.permute(1, 2, 0).contiguous())
        packed = pack_images(images).to(device)
        plan = sample_plan(packed.sizes, config, generator=generator)
        inputs.append({"images": images, "numpy": [im.numpy() for im in images], "packed": packed, "plan": plan})
    return inputs


class _PatchDataset(torch.utils.data.Dataset):
    """One image's patches per item: the numpy/PIL baseline spread over DataLoader workers."""

    def __init__(self, batch):
        self.numpy, self.plan = batch["numpy"], batch["plan"]

    def __len__(self):
        return len(self.numpy)

    def __getitem__(self, index):
        rows = self.plan.patches[:, 0] == index
        sub = dataclasses.replace(self.plan, patches=self.plan.patches[rows])
        return numpy_pil_pipeline(self.numpy, sub)


def data_step_cases(device: torch.device, include_reference: bool, workers: int) -> dict:
    cases = {}
    if include_reference:
        cases["reference"] = lambda b: extract_patches(b["packed"], b["plan"], backend="reference")
    for backend in backends.fast_backends(device):
        cases[backend] = lambda b, backend=backend: extract_patches(b["packed"], b["plan"], backend=backend)
    cases["baseline: numpy/PIL per patch"] = lambda b: numpy_pil_pipeline(b["numpy"], b["plan"])
    if has_opencv():
        cases["baseline: OpenCV per patch"] = lambda b: opencv_pipeline(b["numpy"], b["plan"])
    if workers > 0:
        loaders = {}  # persistent workers per input set: worker start-up is not part of the measured step

        def with_workers(b):
            if id(b) not in loaders:
                loaders[id(b)] = torch.utils.data.DataLoader(_PatchDataset(b), batch_size=None, num_workers=workers,
                                                             persistent_workers=True)
            return [item for item in loaders[id(b)]]

        cases[f"baseline: numpy/PIL, {workers} workers"] = with_workers
    cases["baseline: per-sample torch eager"] = lambda b: per_sample_torch(b["packed"], b["plan"])
    cases["baseline: batched unfused torch"] = lambda b: batched_torch(b["packed"], b["plan"])
    try:
        import kornia  # noqa: F401

        cases["baseline: kornia (batched)"] = lambda b: _kornia_pipeline(b)
    except ImportError:
        pass
    return cases


def _kornia_pipeline(batch):
    import kornia

    packed, plan = batch["packed"], batch["plan"]
    crops = batched_torch(packed, plan)  # same crops; kornia does the normalisation step
    return kornia.enhance.normalize(crops, crops.mean(dim=(0, 2, 3)), crops.std(dim=(0, 2, 3)))


def copy_bandwidth(device: torch.device, rounds: int) -> float:
    """Bytes read + written per second of a large device-to-device copy."""
    source = torch.empty(1 << 28, dtype=torch.uint8, device=device).random_()  # 256 MiB, not zeros
    target = torch.empty_like(source)
    seconds = time_median(lambda _: target.copy_(source), [None], device, rounds)
    return 2 * source.numel() / seconds


def bench_data_step(config: PatchConfig, device: torch.device, images_per_set: int, sets: int, rounds: int,
                    workers: int, include_reference: bool, seed: int = 0) -> dict:
    inputs = make_inputs(sets, images_per_set, config, device, seed)
    patches = statistics.mean(b["plan"].num_patches for b in inputs)
    rows = {}
    for name, fn in data_step_cases(device, include_reference, workers).items():
        seconds = time_median(fn, inputs, device, rounds if name != "reference" else max(1, rounds // 3))
        rows[name] = {"seconds": seconds, "patches_per_s": patches / seconds}
    result = {"patches_per_batch": patches, "images_per_batch": images_per_set, "rows": rows}
    fused = [k for k in rows if not k.startswith("baseline") and k != "reference"]
    result["ratios"] = {f"{f} / {b}": rows[b]["seconds"] / rows[f]["seconds"]
                        for f in fused for b in rows if b.startswith("baseline")}
    if device.type == "cuda":
        peak = copy_bandwidth(device, rounds)
        result["copy_bandwidth_GBps"] = peak / 1e9
        for name in fused:
            moved = statistics.mean(_bytes_moved(b, 4) for b in inputs)
            achieved = moved / rows[name]["seconds"]
            rows[name]["bandwidth_GBps"] = achieved / 1e9
            rows[name]["fraction_of_copy"] = achieved / peak
    return result


def _bytes_moved(batch, out_bytes_per_element: int) -> int:
    """The fewest bytes the op must move: each source image read once, each output element written once."""
    plan = batch["plan"]
    read = sum(im.numel() for im in batch["images"])
    written = plan.num_patches * 3 * plan.patch_size**2 * out_bytes_per_element
    return read + written


def batches_of(patches: int, config: PatchConfig, device: torch.device, sets: int) -> list[dict]:
    """`sets` inputs whose plans hold exactly `patches` patches (rows repeated if the images give fewer)."""
    inputs = make_inputs(sets, max(1, patches // 50), config, device, seed=patches)
    for batch in inputs:
        rows = torch.arange(patches) % batch["plan"].num_patches
        batch["plan"] = dataclasses.replace(batch["plan"], patches=batch["plan"].patches[rows].contiguous())
    return inputs


def bench_batch_sizes(config: PatchConfig, device: torch.device, rounds: int, sizes=(64, 256, 1024)) -> dict:
    """GPU only: fused kernels at B patches against the copy bandwidth (roofline %)."""
    peak = copy_bandwidth(device, rounds)
    out = {"copy_bandwidth_GBps": peak / 1e9, "rows": {}}
    for patches in sizes:
        inputs = batches_of(patches, config, device, sets=3)
        for backend in backends.fast_backends(device):
            seconds = time_median(lambda b: extract_patches(b["packed"], b["plan"], backend=backend), inputs, device,
                                  rounds)
            moved = statistics.mean(_bytes_moved(b, 4) for b in inputs)
            out["rows"][f"{backend} B={patches}"] = {"seconds": seconds, "patches_per_s": patches / seconds,
                                                      "bandwidth_GBps": moved / seconds / 1e9,
                                                      "fraction_of_copy": moved / seconds / peak}
    return out


def bench_train_step(config: PatchConfig, device: torch.device, steps: int, width: float, images: int,
                     compiled: bool, bf16: bool) -> dict:
    """Seconds per step fed by the real data path (uint8 images -> fused op) vs fed ready-made patches."""
    from .models import build_model
    from .pretext import compute_loss

    model = build_model("caffenet", width, config.patch).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    loss_fn = torch.compile(compute_loss, dynamic=True) if compiled else compute_loss
    autocast = torch.bfloat16 if bf16 else None
    inputs = make_inputs(3, images, config, device, seed=7)
    ready = [(extract_patches(b["packed"], b["plan"], channels_last=True), b["plan"].pairs.to(device),
              b["plan"].labels.to(device)) for b in inputs]

    def step(patches, pairs, labels):
        loss, _, _ = loss_fn(model, patches, pairs, labels, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def from_images(b):
        plan = sample_plan(b["packed"].sizes, config, seed=1)
        patches = extract_patches(b["packed"], plan, channels_last=True, dtype=autocast or torch.float32)
        step(patches, plan.pairs.to(device, non_blocking=True), plan.labels.to(device, non_blocking=True))

    def from_ready(r):
        step(*r)

    with_data = time_median(from_images, inputs, device, steps)
    without = time_median(from_ready, ready, device, steps)
    patches = statistics.mean(b["plan"].num_patches for b in inputs)
    pairs = statistics.mean(b["plan"].num_pairs for b in inputs)
    return {"compiled": compiled, "bf16": bf16, "width": width, "patches_per_step": patches,
            "seconds_with_data_path": with_data, "seconds_ready_patches": without,
            "patches_per_s": patches / with_data, "pairs_per_s": pairs / with_data,
            "data_path_share": max(0.0, 1.0 - without / with_data)}


def _compare_with_baselines(cpu_op: dict, data_step: dict) -> None:
    """Speed-up of the CPU op (out=, N threads) over each baseline row of the same run (same inputs)."""
    threads = cpu_op["threads"]
    for row in cpu_op["rows"].values():
        row["speedup_over"] = {name: row[f"{threads}_thread_patches_per_s"] / base["patches_per_s"]
                               for name, base in data_step["rows"].items() if name.startswith("baseline")}


def format_report(report: dict) -> str:
    lines = [f"device: {report['environment']['device']} ({report['environment']['device_type']}), "
             f"torch {report['environment']['torch']}, commit {str(report['environment']['commit'])[:10]}"]
    data = report["data_step"]
    lines.append(f"\ndata step: {data['images_per_batch']} images, {data['patches_per_batch']:.0f} patches per batch")
    lines.append(f"{'case':<40}{'ms':>10}{'patches/s':>14}")
    for name, row in data["rows"].items():
        extra = f"   {row['fraction_of_copy']:.0%} of copy" if "fraction_of_copy" in row else ""
        lines.append(f"{name:<40}{row['seconds'] * 1e3:>10.2f}{row['patches_per_s']:>14.0f}{extra}")
    lines.append("\nspeed-up of each fused backend over each baseline (same run, same inputs):")
    for name, ratio in data["ratios"].items():
        lines.append(f"  {name:<70}{ratio:>8.1f}x")
    if "cpu_op" in report:
        detail, n = report["cpu_op"], report["cpu_op"]["threads"]
        lines.append(f"\nCPU op, out= reused (as training does), colour drop, {detail['patches_per_batch']:.0f} patches:")
        counts = report["cpu_op"].get("instructions_per_element", {})
        for name, row in detail["rows"].items():
            ipe = f", {counts[name]:.1f} instructions/element" if counts.get(name) else ""
            lines.append(f"  {name}: {row['1_thread_patches_per_s']:.0f} patches/s on 1 thread, "
                         f"{row[f'{n}_thread_patches_per_s']:.0f} on {n} ({row['speedup_1_to_n_threads']:.2f}x), "
                         f"{row['times_fill_floor']:.1f}x the time of filling its output{ipe}")
            for base, ratio in row["speedup_over"].items():
                lines.append(f"      {ratio:6.1f}x {base}")
    if "batch_sizes" in report:
        lines.append(f"\nGPU roofline (copy {report['batch_sizes']['copy_bandwidth_GBps']:.0f} GB/s):")
        for name, row in report["batch_sizes"]["rows"].items():
            lines.append(f"  {name:<20}{row['bandwidth_GBps']:>8.0f} GB/s  {row['fraction_of_copy']:>6.0%}")
    for row in report.get("train_step", []):
        lines.append(f"\ntrain step ({'compiled' if row['compiled'] else 'eager'}, {'bf16' if row['bf16'] else 'fp32'}, "
                     f"width {row['width']}): {row['patches_per_s']:.0f} patches/s, {row['pairs_per_s']:.0f} pairs/s, "
                     f"data path {row['data_path_share']:.1%} of the step")
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .show import save_atomically

    rows = report["data_step"]["rows"]
    names = list(rows)
    values = [rows[n]["patches_per_s"] for n in names]
    figure, axis = plt.subplots(figsize=(9, 0.5 * len(names) + 1.5))
    colours = ["tab:gray" if n.startswith("baseline") else "tab:blue" for n in names]
    axis.barh(names, values, color=colours)
    axis.set_xscale("log")
    axis.invert_yaxis()
    axis.set_xlabel("patches per second (log scale)")
    env = report["environment"]
    axis.set_title(f"data step on {env['device']} ({env['device_type']}), torch {env['torch']}")
    save_atomically(figure, str(path))


def run_bench(args) -> dict:
    device = resolve_device(args.device)
    quick = args.quick
    config = PatchConfig(patch=32, gap=16, jitter=3, min_pixels=20_000, max_pixels=40_000,
                         downsample_area=(9, 31 * 31)) if quick else PatchConfig()
    rounds = 2 if quick else args.rounds
    report = {"environment": environment(device), "quick": quick}
    report["data_step"] = bench_data_step(config, device, images_per_set=2 if quick else args.images,
                                          sets=2 if quick else 4, rounds=rounds, workers=args.workers,
                                          include_reference=quick or args.reference)
    if device.type == "cuda":
        report["batch_sizes"] = bench_batch_sizes(config, device, rounds)
    elif backends.has_cpu_extension():
        images, sets = report["data_step"]["images_per_batch"], 2 if quick else 4
        report["cpu_op"] = cpu_op_detail(make_inputs(sets, images, config, device, seed=0), rounds)
        _compare_with_baselines(report["cpu_op"], report["data_step"])
        if not quick:  # callgrind takes minutes
            report["cpu_op"]["instructions_per_element"] = {name: instructions_per_element(name) for name in DTYPES}
    if args.train or quick:
        runs = [(False, False)] if device.type == "cpu" else [(False, False), (True, True)]
        width = 0.125 if quick else args.width
        report["train_step"] = [bench_train_step(config if not quick else PatchConfig(
            patch=48, gap=24, jitter=3, min_pixels=30_000, max_pixels=40_000, downsample_area=(9, 45 * 45)),
            device, max(2, rounds), width, 2 if quick else args.images, compiled, bf16) for compiled, bf16 in runs]
    return report


_DEFAULTS = {"device": "auto", "images": 8, "rounds": 10, "workers": 2, "reference": False, "train": False,
             "width": 1.0, "quick": False, "arch": [90, 80]}
# Options each mode leaves unused: naming them beats silently ignoring what the user typed.
_IGNORED = (
    (lambda args: args.static, ("device", "images", "rounds", "workers", "reference", "train", "width", "quick")),
    (lambda args: not args.static, ("arch",)),
    (lambda args: args.quick, ("images", "rounds", "width")),
    (lambda args: not (args.train or args.quick), ("width",)),
)


def _warn_ignored(args) -> None:
    ignored = {name for applies, names in _IGNORED if applies(args) for name in names
               if getattr(args, name) != _DEFAULTS[name]}
    for name in sorted(ignored):
        log.warning("--%s is ignored in this mode (see relpos bench --help)", name.replace("_", "-"))


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench", help="benchmark the fused op against baselines, and the training step",
        description="Time the data step (uint8 images -> normalised patches) for every available backend beside "
        "baselines (numpy/PIL per patch as the authors did it, per-sample eager torch, batched unfused torch) "
        "in one run, on the same inputs; on a GPU also bandwidth against a device-to-device copy. Prints a "
        "table and writes JSON and a PNG chart.",
        formatter_class=HelpFormatter)
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG")
    parser.add_argument("--device", type=device_text, default=_DEFAULTS["device"], help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--images", type=bounded_int(1, 4096), default=_DEFAULTS["images"], help="images per batch")
    parser.add_argument("--rounds", type=bounded_int(1, 10_000), default=_DEFAULTS["rounds"],
                        help="timed runs per case (median reported)")
    parser.add_argument("--workers", type=bounded_int(0, 256), default=_DEFAULTS["workers"],
                        help="DataLoader workers for the numpy/PIL baseline")
    parser.add_argument("--reference", action="store_true", help="also time the (slow) pure-PyTorch reference")
    parser.add_argument("--train", action="store_true", help="also time the training step (data path share)")
    parser.add_argument("--width", type=bounded_float(0.01, 16.0), default=_DEFAULTS["width"],
                        help="tower width for --train")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, two rounds: checks the suite runs")
    parser.add_argument("--static", action="store_true",
                        help="instead: the static GPU report (benchmarks/gpu_static.py; compiles for --arch, no GPU needed)")
    parser.add_argument("--arch", type=int, nargs="+", choices=(80, 90), default=_DEFAULTS["arch"],
                        help="SM versions for --static")
    parser.set_defaults(run=_run)


def unused_stem(folder: Path, stem: str, suffixes: tuple[str, ...]) -> str:
    """`stem`, or `stem-2`, `stem-3`, ...: the first whose files do not exist yet (no run overwrites another)."""
    candidate, count = stem, 1
    while any((folder / f"{candidate}{suffix}").exists() for suffix in suffixes):
        count += 1
        candidate = f"{stem}-{count}"
    return candidate


def _run(args) -> int:
    _warn_ignored(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)  # before the long run, so a bad --out fails at once
    if args.static:  # lives beside the benchmarks of the source checkout, not in the installed package
        import importlib.util
        import sys
        path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_static.py"
        if not path.exists():
            raise SystemExit(f"relpos bench --static needs a source checkout: {path} not found")
        spec = importlib.util.spec_from_file_location("gpu_static", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        return module.run(argparse.Namespace(arch=args.arch, ci=False, out=args.out))
    report = run_bench(args)
    print(format_report(report))
    env = report["environment"]
    stem = unused_stem(out, f"bench-{env['device_type']}-{env['date'][:10]}{'-quick' if report['quick'] else ''}",
                       (".json", ".png"))
    atomic_write_bytes(out / f"{stem}.json", strict_json(report, indent=2).encode())
    plot_report(report, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0
