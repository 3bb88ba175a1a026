"""Turn the logs of benchmarks/gpu_session.sh (unpacked gpu-session.tgz folders, one per device call) into one
silicon report: benchmarks/results/gpu-silicon-<date>-<commit>.{md,json}.

    python benchmarks/gpu_session_report.py SESSION_DIR [SESSION_DIR ...] [--tests TESTS_LOG] [--static JSON]

Reads what each folder holds (environment.txt, exact.txt, ncu.csv + profile.txt, time.txt, variants.txt, host.txt,
memcheck/racecheck/synccheck.txt, bench-*.json) and sets the kernel-level ncu figures beside the static report's
estimates for the same kernels (`--static`: a gpu_static.py JSON), so the compiler's figures can be checked."""

from __future__ import annotations

import argparse
import csv
import datetime
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def read_ncu(folder: Path) -> list[dict]:
    """One row per profiled kernel launch, joined to the case that launched it (profile.txt lists cases in order;
    the Triton backend launches twice per case: crop patches, then down-sampled ones)."""
    metrics: dict[int, dict] = defaultdict(dict)
    for row in csv.DictReader(line for line in open(folder / "ncu.csv") if line.startswith('"')):
        launch = metrics[int(row["ID"])]
        launch["kernel"] = row["Kernel Name"]
        launch["block"] = row["Block Size"]
        launch["grid"] = row["Grid Size"]
        launch[row["Metric Name"]] = float(row["Metric Value"].replace(",", ""))
    cases = [line.strip().split(",") for line in open(folder / "profile.txt") if re.match(r"^\d+,", line)]
    launches = [metrics[i] for i in sorted(metrics)]
    rows, at = [], 0
    for _, backend, color, dtype, elements in cases:
        count = 2 if backend == "triton" else 1
        parts = launches[at:at + count]
        at += count
        seconds = sum(p["gpu__time_duration.sum"] for p in parts) / 1e9
        moved = sum(p["dram__bytes_read.sum"] + p["dram__bytes_write.sum"] for p in parts)
        rows.append({
            "backend": backend, "color": color, "dtype": dtype, "launches": count, "elements": int(elements),
            "kernel_us": seconds * 1e6,
            "dram_MB": moved / 1e6,
            "dram_GBps": moved / seconds / 1e9,
            "thread_instr_per_element": sum(p["smsp__thread_inst_executed.sum"] for p in parts) / int(elements),
            "warp_instr": sum(p["smsp__inst_executed.sum"] for p in parts),
            "warps_active_pct": [p["sm__warps_active.avg.pct_of_peak_sustained_active"] for p in parts],
            "registers": [int(p["launch__registers_per_thread"]) for p in parts],
            "local_load_MB": sum(p["l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum"] for p in parts) / 1e6,
            "block": [p["block"] for p in parts],
        })
    return rows


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.startswith("{")] if path.exists() else []


def text_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", errors="replace") as file:
        return file.readlines()


def last_line(path: Path, pattern: str) -> str | None:
    if not path.exists():
        return None
    found = [line.strip() for line in text_lines(path) if re.search(pattern, line)]
    return found[-1] if found else None


def static_estimates(paths: list[Path]) -> dict:
    """kernel name -> sm_90 default-mix estimate, from gpu_static.py reports (a later file wins)."""
    estimates = {}
    for path in paths:
        estimates.update({row["kernel"]: row for row in json.loads(path.read_text())["default_mix"]
                          if row["arch"] == "sm_90"})
    return estimates


def floor_bytes(patches: int, out_bytes: int) -> int:
    """The fewest bytes the profiled call must move (images read once, output written once): the same inputs as
    gpu_profile_target.py, rebuilt on the CPU (seeded)."""
    import torch

    from relpos.bench import _bytes_moved, batches_of
    from relpos.config import PatchConfig

    return _bytes_moved(batches_of(patches, PatchConfig(), torch.device("cpu"), sets=1)[0], out_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sessions", nargs="+", type=Path)
    parser.add_argument("--tests", type=Path, help="a pytest log from the GPU")
    parser.add_argument("--static", type=Path, action="append", default=[],
                        help="gpu_static.py JSON whose sm_90 default-mix estimates to compare (repeatable)")
    parser.add_argument("--notes", type=Path, help="a Markdown file of conclusions, put at the top of the report")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report: dict = {"sessions": []}
    for folder in args.sessions:
        session = {"folder": folder.name, "environment": (folder / "environment.txt").read_text().strip()
                   if (folder / "environment.txt").exists() else None}
        session["exact"] = last_line(folder / "exact.txt", r"cuda vs cpu:")
        for tool in ("memcheck", "racecheck", "synccheck"):
            session[tool] = last_line(folder / f"{tool}.txt", r"SUMMARY")
        if (folder / "ncu.csv").exists():
            session["ncu"] = read_ncu(folder)
        session["time"] = json_lines(folder / "time.txt")
        session["variants"] = json_lines(folder / "variants.txt")
        if (folder / "host.txt").exists():
            session["host"] = [line.strip() for line in open(folder / "host.txt") if line.startswith("###")]
        for bench in sorted(folder.glob("bench-*.json")):
            session["bench"] = json.loads(bench.read_text())
        report["sessions"].append(session)
    if args.tests:
        report["tests"] = last_line(args.tests, r"(passed|failed).* in ")
        report["failed"] = sorted({line.split()[1] for line in text_lines(args.tests) if line.startswith("FAILED ")})
    estimates = static_estimates(args.static)
    commit_line = next((s["environment"] for s in report["sessions"] if s["environment"]), "")
    commit = re.search(r"commit ([0-9a-f]{10})", commit_line or "")
    stem = f"gpu-silicon-{datetime.date.today()}-{commit.group(1) if commit else 'unknown'}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    notes = args.notes.read_text().strip() + "\n\n" if args.notes else ""
    (args.out / f"{stem}.md").write_text(format_markdown(report, estimates, args.static).replace("\n\n", "\n\n" + notes, 1))
    print(f"wrote {args.out / stem}.md and .json")


def format_markdown(report: dict, estimates: dict, static_paths: list[Path]) -> str:
    floors = {dtype: floor_bytes(1024, size) for dtype, size in (("float32", 4), ("bfloat16", 2))}
    lines = ["# relpos on silicon: what a lent GPU measured", ""]
    for session in report["sessions"]:
        lines += [f"## {session['folder']}", "", "```", session["environment"] or "(no environment.txt)", "```", ""]
        for key in ("exact", "memcheck", "racecheck", "synccheck"):
            if session.get(key):
                lines.append(f"- {key}: `{session[key]}`")
        for line in session.get("host", []):
            lines.append(f"- host overhead: {line.removeprefix('### ')}")
        if session.get("ncu"):
            copy = next((t["copy_GBps"] for t in session["time"]), None) or 2800
            lines += ["", f"Kernel time and traffic from ncu (B = 1024 patches of the default config, 33% down-sampled; "
                      f"% of copy uses {copy} GB/s measured by a device-to-device copy). Static estimate: "
                      f"{', '.join(p.name for p in static_paths) or 'none given'}. Bench MB counts what `relpos bench` does "
                      "(every image read whole once, the output written once); the kernel reads only its windows, "
                      "so ncu's DRAM MB can be lower.", "",
                      "| backend | colour | dtype | kernel µs | bench MB | bench MB / time: % of copy | DRAM MB | "
                      "thread instr/elem (silicon) | estimate | warps active % | regs | local loads MB |",
                      "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
            for row in session["ncu"]:
                floor = floors[row["dtype"]]
                est = estimates.get(f"{row['backend']}-{row['color']}-{row['dtype']}-nchw")
                est_text = f"{est['thread_instr_per_element_est']:.1f}" if est else "–"
                lines.append(
                    f"| {row['backend']} | {row['color']} | {row['dtype']} | {row['kernel_us']:.1f} "
                    f"| {floor / 1e6:.1f} | {100 * floor / (row['kernel_us'] * 1e-6) / (copy * 1e9):.0f}% | {row['dram_MB']:.1f} "
                    f"| {row['thread_instr_per_element']:.1f} | {est_text} "
                    f"| {'/'.join(f'{w:.0f}' for w in row['warps_active_pct'])} "
                    f"| {'/'.join(map(str, row['registers']))} | {row['local_load_MB']:.1f} |")
        for name in ("time", "variants"):
            if session.get(name):
                lines += ["", f"Whole calls ({name}: CUDA events around `relpos.extract_patches`, plan on the device, "
                          "median of 50, host overhead included):", "",
                          "| build | backend | colour | dtype | µs per call | output digest |", "|---|---|---|---|---:|---|"]
                for row in session[name]:
                    lines.append(f"| {row['label']} | {row['backend']} | {row['color']} | {row['dtype']} | {row['us']} "
                                 f"| `{row['digest']}` |")
        if session.get("bench"):
            data = session["bench"]["data_step"]
            lines += ["", f"Data step beside the baselines ({data['images_per_batch']} images, "
                      f"{data['patches_per_batch']:.0f} patches):", ""]
            for case, row in data["rows"].items():
                lines.append(f"- {case}: {row['seconds'] * 1e3:.2f} ms")
            for case, ratio in data["ratios"].items():
                lines.append(f"- {case}: {ratio:.1f}x")
            for case, row in session["bench"].get("batch_sizes", {}).get("rows", {}).items():
                lines.append(f"- roofline {case} (plan on the CPU, whole call): {row['bandwidth_GBps']:.0f} GB/s, "
                             f"{row['fraction_of_copy']:.0%} of copy")
        lines.append("")
    if report.get("tests"):
        lines += ["## Test suite on the GPU", "", f"`{report['tests']}`", ""]
        lines += [f"- failed: `{name}`" for name in report.get("failed", [])]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
