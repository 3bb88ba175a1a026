"""Static GPU report: compile the GPU kernels for sm_80/sm_90 on a machine with no GPU and read the compiler's
figures (registers, spill bytes, stack, shared memory, SASS instruction counts), then derive theoretical
occupancy and a paper roofline from them.

    python benchmarks/gpu_static.py [--arch 90 80] [--ci] [--out benchmarks/results]
    relpos bench --static [...]

Triton specialisations are compiled ahead of time with `triton.compile(ASTSource(...), target=GPUTarget(...))`
exactly as `kernels/extract_patches.py:launch` would specialise them (16-byte pointer and stride hints, strides
equal to 1 as constexprs); the CUDA kernel with nvcc and setup.py's flags plus `-Xptxas -v`. Figures marked
"compiler" come from ptxas/cuobjdump/nvdisasm; "derived" ones are arithmetic on them (occupancy from the
per-SM limits, a roofline at H100 clocks assuming one warp-instruction per scheduler per cycle); nothing here
is measured on silicon. `--ci` compiles every specialisation for sm_90, writes no report and exits nonzero if any
spills.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Per-SM limits (CUDA C Programming Guide, compute capability table); identical for sm_80 and sm_90 except smem.
SM_LIMITS = {
    80: {"regs": 65536, "threads": 2048, "blocks": 32, "warps": 64, "smem": 164 * 1024, "reg_unit": 256},
    90: {"regs": 65536, "threads": 2048, "blocks": 32, "warps": 64, "smem": 228 * 1024, "reg_unit": 256},
}
# H100 SXM paper figures for the roofline: 132 SMs x 4 schedulers, ~1.755 GHz boost, 3.0 TB/s HBM3 (copy).
H100 = {"sms": 132, "schedulers": 4, "clock_hz": 1.755e9, "bandwidth": 3.0e12}
COLORS = {"none": 0, "drop": 1, "project": 2}
DTYPES = {"float32": ("fp32", 4), "bfloat16": ("bf16", 2), "float16": ("fp16", 2)}
PATCH = 96
DOWN_SHARE = 1 / 3  # the default plan mix: a third of the patches take the down/up-sampling path


def kernel_module():
    """kernels/extract_patches.py of this checkout (by path, so an older checkout can be reported on too)."""
    import importlib.util
    name = "relpos_static_kernel"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "kernels" / "extract_patches.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def occupancy(arch: int, regs: int, smem: int, threads: int) -> dict:
    """Theoretical occupancy (resident warps / max warps) from registers, shared memory and block size."""
    lim = SM_LIMITS[arch]
    warps = -(-threads // 32)
    regs_per_warp = -(-max(regs, 1) * 32 // lim["reg_unit"]) * lim["reg_unit"]
    by_regs = lim["regs"] // (regs_per_warp * warps) if regs_per_warp else lim["blocks"]
    by_smem = lim["smem"] // (smem + 1024) if smem else lim["blocks"]  # 1 KB per block reserved by the driver
    by_threads = lim["threads"] // threads
    blocks = max(0, min(by_regs, by_smem, by_threads, lim["blocks"]))
    limiter = min((by_regs, "registers"), (by_smem, "shared memory"), (by_threads, "threads"))[1]
    return {"blocks_per_sm": blocks, "occupancy": blocks * warps / lim["warps"], "limited_by": limiter}


def tool(name: str) -> str:
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def resource_usage(cubin: Path) -> dict:
    """REG/STACK/SHARED/LOCAL of each function in a cubin, from `cuobjdump -res-usage`."""
    text = subprocess.run([tool("cuobjdump"), "-res-usage", str(cubin)], check=True, capture_output=True,
                          text=True).stdout
    usage, name = {}, None
    for line in text.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and name:
            usage[name] = dict(zip(("regs", "stack", "shared", "local"), map(int, m.groups())))
    return usage


def sass_counts(cubin: Path) -> dict:
    """Static SASS instruction counts per function (all, local-memory, global loads/stores), via nvdisasm."""
    text = subprocess.run([tool("nvdisasm"), "-c", str(cubin)], check=True, capture_output=True, text=True).stdout
    counts, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*\.section\s+\.text\.([^,\s]+)", line)
        if m:
            name = m.group(1)
            counts[name] = {"sass": 0, "local": 0, "global": 0}
            continue
        if name and re.match(r"\s*/\*[0-9a-f]{4,}\*/", line):
            body = re.sub(r"^\s*/\*[0-9a-f]+\*/\s*(@!?U?P\w+\s+)?", "", line).split()
            op = body[0] if body else ""
            if not op or op.startswith("NOP"):
                continue
            counts[name]["sass"] += 1
            if op.startswith(("LDL", "STL")):
                counts[name]["local"] += 1
            if op.startswith(("LDG", "STG")):
                counts[name]["global"] += 1
    return counts


def sass_listing(cubin: Path) -> dict:
    """Per function, its SASS in order: ("label", name) and ("instr", opcode, branch target or None), via nvdisasm."""
    text = subprocess.run([tool("nvdisasm"), "-c", str(cubin)], check=True, capture_output=True, text=True).stdout
    listing, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*\.section\s+\.text\.([^,\s]+)", line)
        if m:
            name = m.group(1)
            listing[name] = []
            continue
        if name is None:
            continue
        m = re.match(r"(\.L_\w+):", line.strip())
        if m:
            listing[name].append(("label", m.group(1)))
            continue
        if re.match(r"\s*/\*[0-9a-f]{4,}\*/", line):
            body = re.sub(r"^\s*/\*[0-9a-f]+\*/\s*(@!?U?P\w+\s+)?", "", line).split()
            op = body[0] if body else ""
            if op and not op.startswith("NOP"):
                target = re.search(r"`\((\.L_\w+)\)", line) if op.startswith("BRA") else None
                listing[name].append(("instr", op, target.group(1) if target else None))
    return listing


def loops(listing: list) -> list[tuple[int, int]]:
    """Loops of a SASS listing as (first, last) instruction indices: a branch back to an earlier label."""
    labels, found, index = {}, [], 0
    for entry in listing:
        if entry[0] == "label":
            labels[entry[1]] = index
        else:
            if entry[2] is not None and entry[2] in labels and labels[entry[2]] < index:  # not the final self-branch
                found.append((labels[entry[2]], index))
            index += 1
    return found


def weighted_instructions(listing: list, trips: list[float]) -> float:
    """Instructions one warp issues per patch: a kernel whose per-patch work lies in loops directly inside an
    outer loop over patches (kernels/extract_patches.py). Each inner loop's body counts `trips` times (the
    kernel's own per-loop trip counts, in program order), everything else once per patch (one-off code, the
    rarely taken slow paths of divisions and the branch not taken all count in full).

    The last loop (the normalise-and-store loop, a constant trip count) may be unrolled whole by ptxas: then its
    copies are straight-line code, counted once each, i.e. once per trip. That is accepted only when the code
    after the last remaining loop holds at least three global stores per trip (the three channels), so that a
    different loop unrolled away still fails the estimate rather than skew it."""
    found = sorted(loops(listing))
    instructions = [e for e in listing if e[0] == "instr"]
    count = len(instructions)
    outer = [l for l in found if any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in found)]
    inner = [l for l in found if l not in outer]
    if len(outer) == 1 and inner and len(inner) == len(trips) - 1:
        tail = instructions[max(last for _, last in inner) + 1: outer[0][1]]
        if sum(1 for e in tail if e[1].startswith("STG")) >= 3 * trips[-1]:
            trips = trips[:-1]
    if len(outer) != 1 or len(inner) != len(trips):
        raise RuntimeError(f"SASS loop structure {found} does not match the kernel's {len(trips)} per-patch loops "
                           "(kernels/extract_patches.py: loop_trips)")
    total = float(count)
    for (first, last), n in zip(inner, trips):
        total += (last - first + 1) * (n - 1)
    return total


def ptxas_spills(log: str) -> dict:
    """Spill bytes per function from `ptxas -v` output."""
    spills, name = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line) or re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            spills[name] = int(m.group(1)) + int(m.group(2))
    return spills


def bytes_per_patch(dtype_bytes: int, color: str) -> float:
    """HBM bytes one patch must move: the uint8 source window read once (3 channels, or 1 for colour drop,
    ~the patch area at scale 1) and the 3 x P x P output written once."""
    read = PATCH * PATCH * (1 if color == "drop" else 3)
    return read + 3 * PATCH * PATCH * dtype_bytes


def roofline(instr_per_patch: float, nbytes: float, extra_bytes: float = 0.0) -> dict:
    """Paper roofline at H100 clocks: patch time bound by issue (warp instructions, 4/clk/SM) vs by HBM, as the
    share of copy bandwidth the patch's own bytes get; extra_bytes (scratch traffic) take HBM time too."""
    t_issue = instr_per_patch / 32 / (H100["sms"] * H100["schedulers"] * H100["clock_hz"])
    t_mem = nbytes / H100["bandwidth"]
    t_all = (nbytes + extra_bytes) / H100["bandwidth"]
    return {"bytes_per_patch": nbytes, "extra_bytes_per_patch": extra_bytes, "ns_issue_bound": t_issue * 1e9,
            "ns_memory_bound": t_all * 1e9, "percent_of_copy_bandwidth": 100.0 * t_mem / max(t_issue, t_all)}


# ----------------------------------------------------------------------------------------------- Triton
@dataclasses.dataclass(frozen=True)
class TritonSpec:
    color: str
    dtype: str
    channels_last: bool
    down: bool | None  # None: today's kernel has no crop/down split

    @property
    def name(self) -> str:
        path = "" if self.down is None else ("-down" if self.down else "-crop")
        return f"triton-{self.color}-{self.dtype}-{'nhwc' if self.channels_last else 'nchw'}{path}"


def triton_specs(full: bool) -> list[TritonSpec]:
    k = kernel_module()
    downs = [False, True] if getattr(k, "SPLITS_DOWN", False) else [None]
    if not full:  # CI: every colour (the register/spill behaviour differs), one dtype and layout
        return [TritonSpec(c, "float32", False, d) for c in COLORS for d in downs]
    return [TritonSpec(c, t, cl, d) for c in COLORS for t in DTYPES for cl in (False, True) for d in downs]


def expected_trips(k, args: dict) -> list[float]:
    """The kernel's per-loop trip counts, averaged over the default plan's down sizes (floor(sqrt(area)), area
    uniform in PatchConfig.downsample_area) for the down path."""
    if not args["DOWN"]:
        return k.loop_trips(args, 0)
    from relpos.config import PatchConfig
    low, high = PatchConfig().downsample_area
    samples = [k.loop_trips(args, int((low + (high - low) * (i + 0.5) / 1000) ** 0.5)) for i in range(1000)]
    return [sum(column) / len(samples) for column in zip(*samples)]


def compile_triton(spec: TritonSpec, arch: int, work: Path) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    k = kernel_module()

    strides = (3 * PATCH * PATCH, 1, 3 * PATCH, 3) if spec.channels_last else (3 * PATCH * PATCH, PATCH * PATCH, PATCH, 1)
    args = k.specialisation(COLORS[spec.color], PATCH, strides, spec.down)
    fn = k.extract_patches_kernel
    signature, constexprs, attrs = {}, {}, {}
    pointer_types = {"data": "*u8", "meta": "*i64", "plan": "*i32", "out": "*" + DTYPES[spec.dtype][0],
                     "scratch_f": "*fp32", "scratch_i": "*i64", "plan_error": "*i32"}
    for i, name in enumerate(fn.arg_names):
        value = args.get(name)
        if name in pointer_types:
            signature[name] = pointer_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif name in args["__constexpr__"] or value == 1:  # the JIT makes integer arguments equal to 1 constexprs
            signature[name], constexprs[name] = "constexpr", value
        else:
            signature[name] = "i64" if name == "seed" else "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({"num_warps": args["__num_warps__"], "maxnreg": args.get("__maxnreg__"),
                                     "enable_fp_fusion": False})
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    seconds = time.perf_counter() - start
    cubin = work / f"{spec.name}-sm{arch}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    ptx = work / f"{spec.name}-sm{arch}.ptx"
    ptx.write_text(compiled.asm["ptx"])
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton itself used for this arch
    ptx_arch = re.search(r"^\.target (\w+)", compiled.asm["ptx"], re.M).group(1)
    log = subprocess.run([get_ptxas(arch).path, "-v", f"-arch={ptx_arch}", "--fmad=false", str(ptx), "-o", os.devnull],
                         capture_output=True, text=True)
    usage = next(iter(resource_usage(cubin).values()))
    counts = next(iter(sass_counts(cubin).values()))
    per_patch = None
    if hasattr(k, "loop_trips"):  # phases in loops: weight each loop body by its own trip count
        listing = next(iter(sass_listing(cubin).values()))
        per_patch = weighted_instructions(listing, expected_trips(k, args))
    threads = 32 * compiled.metadata.num_warps
    smem = compiled.metadata.shared
    if "BLOCK" in args:  # loop-weighted below
        trips = None
    elif "ROWS" in args:  # tiles of ROWS x COLS pixels, each loop body run once per tile per pass
        trips = -(-PATCH // args["ROWS"]) * -(-PATCH // args["COLS"])
    else:
        trips = -(-PATCH * PATCH // args["BLOCK"])
    scratch = None
    if hasattr(k, "scratch_bytes"):  # bytes through the per-program scratch, averaged like the trips
        if spec.down:
            from relpos.config import PatchConfig
            low, high = PatchConfig().downsample_area
            sizes = [int((low + (high - low) * (i + 0.5) / 1000) ** 0.5) for i in range(1000)]
            scratch = sum(k.scratch_bytes(args, d) for d in sizes) / len(sizes)
        else:
            scratch = k.scratch_bytes(args, 0)
    return {"kernel": spec.name, "arch": f"sm_{arch}", "threads_per_block": threads, "compile_s": round(seconds, 1),
            "scratch_bytes_per_patch": scratch,
            "regs": usage["regs"], "stack": usage["stack"], "local": usage["local"],
            "spill_bytes": next(iter(ptxas_spills(log.stdout + log.stderr).values()), None),
            "shared": smem, "sass": counts["sass"], "sass_local": counts["local"], "sass_global": counts["global"],
            **occupancy(arch, usage["regs"], smem, threads), "dtype": spec.dtype, "color": spec.color,
            "path": {None: "both", False: "crop", True: "down"}[spec.down], "trips": trips,
            "warp_instr_per_patch_per_warp": per_patch,
            "layout": "nhwc" if spec.channels_last else "nchw"}


# ------------------------------------------------------------------------------------------------- CUDA
# cudaDevAttrMaxSharedMemoryPerBlockOptin of an A100 and an H100: the launcher gives the staged kernel all of it.
SMEM_OPTIN = {80: 166912, 90: 232448}
# The default mix for the instruction estimate: photographs of these sizes, planned with the default PatchConfig.
MIX_IMAGE_SIZES = [(375, 500), (500, 333), (480, 640), (768, 1024)]
MIX_PATCHES_PER_PATH = 12


def line_counts_module():
    import importlib.util
    name = "relpos_cuda_line_counts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "cuda_line_counts.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def nvcc_cubin(arch: int, source: Path, include: Path, cubin: Path) -> tuple[str, float]:
    """setup.py's nvcc flags (-O3 -lineinfo --fmad=false -DRELPOS_WITH_CUDA) plus -Xptxas -v; the ptxas log."""
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    cmd = [nvcc, "-std=c++17", "-O3", "-lineinfo", "--fmad=false", "-DRELPOS_WITH_CUDA", "-Xptxas", "-v",
           f"-I{include}", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-cubin", str(source), "-o", str(cubin)]
    start = time.perf_counter()
    log = subprocess.run(cmd, capture_output=True, text=True)
    if log.returncode:
        raise RuntimeError(f"nvcc failed:\n{log.stderr}")
    return log.stderr, time.perf_counter() - start


def kernel_threads(source: Path) -> dict:
    """constexpr int kThreads / kPixelThreads of a kernel source (256 where absent)."""
    found = dict(re.findall(r"constexpr int (k\w*Threads) = (\d+);", source.read_text()))
    return {k: int(v) for k, v in found.items()}


def dtype_of(symbol: str) -> str:
    if "OutF32" in symbol or "IfE" in symbol or "Ify" in symbol:
        return "float32"
    return "bfloat16" if "BF16" in symbol or "bfloat16" in symbol else "float16"


def cuda_rows(arch: int, cubin: Path, log: str, seconds: float, threads: dict, label: str) -> list[dict]:
    spills, usage, counts = ptxas_spills(log), resource_usage(cubin), sass_counts(cubin)
    rows = []
    for name, u in usage.items():
        staged = "extract_patches_kernel" in name and "staged" in name
        per_pixel = "per_pixel" in name
        block = threads.get("kPixelThreads" if per_pixel else "kThreads", 256)
        # cuobjdump's SHARED includes the 1 KB the driver reserves per block on sm_90 (not on sm_80); occupancy()
        # adds that reserve itself, so count only the kernel's own bytes here.
        shared = max(0, u["shared"] - (1024 if arch >= 90 else 0))
        if staged:  # dynamic shared memory: the launcher's layout for P = 96 and the arch's opt-in limit
            shared += line_counts_module().layout(_harness(), PATCH, block, SMEM_OPTIN[arch])["total"]
        c = counts.get(name, {"sass": None, "local": None, "global": None})
        kind = "staged" if staged else ("per-pixel" if per_pixel else "old")
        rows.append({"kernel": f"{label}-{kind}-{dtype_of(name)}" if label == "cuda" else f"{label}-{dtype_of(name)}",
                     "arch": f"sm_{arch}", "trips": -(-PATCH * PATCH // block), "threads_per_block": block,
                     "compile_s": round(seconds, 1), "regs": u["regs"], "stack": u["stack"], "local": u["local"],
                     "spill_bytes": spills.get(name), "shared": shared, "sass": c["sass"], "sass_local": c["local"],
                     "sass_global": c["global"], **occupancy(arch, u["regs"], shared, block),
                     "dtype": dtype_of(name), "color": "all", "path": "both", "symbol": name, "cuda_kind": kind})
    return rows


_HARNESS_DIR: list = []


def _harness() -> Path:
    """The CPU harness of the staged phases, built once with gcov (benchmarks/cuda_line_counts.py)."""
    if not _HARNESS_DIR:
        _HARNESS_DIR.append(Path(tempfile.mkdtemp(prefix="relpos-harness-")))
        _HARNESS_DIR.append(line_counts_module().build(_HARNESS_DIR[0]))
    return _HARNESS_DIR[1]


def mix_plans():
    """A default-mix plan on photographs of MIX_IMAGE_SIZES (noise images: the counts do not depend on pixel
    values), split into crop-only and down-sampled rows."""
    import torch
    import relpos
    from relpos.sampler import sample_plan
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8) for h, w in MIX_IMAGE_SIZES]
    packed = relpos.pack_images(images)
    plan = sample_plan(MIX_IMAGE_SIZES, generator=generator).patches
    return packed, {"crop": plan[plan[:, 6] == 0][:MIX_PATCHES_PER_PATH],
                    "down": plan[plan[:, 6] > 0][:MIX_PATCHES_PER_PATH]}


def staged_estimates(arch: int, cubin: Path, rows: list[dict], colors: list[str]) -> list[dict]:
    """Rows per colour and path for the staged and the per-pixel kernels: SASS instructions weighted by the
    harness's line counts (the per-pixel kernel, i.e. the old design, through the harness's per-pixel path)."""
    clc = line_counts_module()
    sass = subprocess.run([tool("nvdisasm"), "-c", "-gi", str(cubin)], check=True, capture_output=True,
                          text=True).stdout
    exe = _harness()
    packed, plans = mix_plans()
    counts = {}
    dtypes = sorted({r["dtype"] for r in rows})  # the line counts of the output type's own run of the harness
    for kind, threads, budget in (("staged", 1024, SMEM_OPTIN[arch]), ("per-pixel", 256, 2048)):
        for color in colors:
            for path, plan in plans.items():
                for dtype in dtypes:
                    source = exe.parent / f"{kind}-{color}-{path}-{dtype}.bin"
                    clc.write_input(source, packed.data, packed.meta, plan, PATCH, 5, color, threads, budget, dtype)
                    counts[kind, color, path, dtype] = (clc.line_counts(exe, exe.parent, source), plan.shape[0])
    out = []
    for r in rows:
        for (kind, color, path, dtype), (line_counts, patches) in counts.items():
            if kind != r["cuda_kind"] or dtype != r["dtype"]:
                continue
            phases: dict = {}
            per_element = clc.instructions_per_element(sass, r["symbol"], line_counts, patches, PATCH,
                                                       r["threads_per_block"], phases)
            name = "cuda" if kind == "staged" else "cuda-per-pixel"
            out.append(dict(r, kernel=f"{name}-{color}-{r['dtype']}-nchw-{path}", color=color, path=path,
                            layout="nchw", thread_instr_per_element_est=per_element,
                            warp_instr_per_patch_est=per_element * 3 * PATCH * PATCH / 32,
                            instr_method="SASS x harness line counts",
                            instr_per_element_by_phase={k: round(v, 2) for k, v in sorted(phases.items(),
                                                                                            key=lambda kv: -kv[1])}))
    return out


def compile_cuda(arch: int, work: Path, full: bool = True, baseline: str | None = None) -> list[dict]:
    """The CUDA kernels: the staged kernel (rows per colour and path, NCHW; every dtype when `full`), the per-pixel
    kernel for patches too large to stage, and, with `baseline` (a git revision), that revision's kernel."""
    if not (os.environ.get("NVCC") or shutil.which("nvcc")):
        return []
    source = REPO / "csrc" / "cuda" / "extract_patches.cu"
    cubin = work / f"cuda-sm{arch}.cubin"
    log, seconds = nvcc_cubin(arch, source, REPO / "csrc", cubin)
    rows = cuda_rows(arch, cubin, log, seconds, kernel_threads(source), "cuda")
    if not full:
        rows = [r for r in rows if r["dtype"] == "float32"]
    rows = staged_estimates(arch, cubin, rows, list(COLORS))
    if baseline:
        old = work / f"baseline-{baseline}"
        old.mkdir(parents=True, exist_ok=True)  # the revision's whole csrc/ (its headers change with it)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", baseline, "csrc"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        old_source = old / "csrc" / "cuda" / "extract_patches.cu"
        old_cubin = work / f"cuda-old-sm{arch}.cubin"
        log, seconds = nvcc_cubin(arch, old_source, old / "csrc", old_cubin)
        rows += [dict(r, baseline=baseline) for r in cuda_rows(arch, old_cubin, log, seconds,
                                                               kernel_threads(old_source), f"cuda-{baseline[:7]}")]
    return rows


# ----------------------------------------------------------------------------------------------- report
def environment() -> dict:
    import triton
    import torch
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    nvcc = shutil.which(os.environ.get("NVCC", "nvcc"))
    nvcc_version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1] if nvcc else None
    ptxas = subprocess.run([tool("ptxas"), "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "dirty": dirty, "triton": triton.__version__, "torch": torch.__version__, "nvcc": nvcc_version,
            "triton_ptxas": ptxas, "h100_model": H100,
            "sources": {"compiler": ["regs", "stack", "local", "spill_bytes", "shared", "sass", "sass_local",
                                     "sass_global"],
                        "derived": ["occupancy", "blocks_per_sm", "limited_by", "warp_instr_per_patch_est",
                                    "thread_instr_per_element_est", "roofline", "default_mix"],
                        "silicon": []}}


def markdown(report: dict) -> str:
    lines = [f"# Static GPU report (commit {report['environment']['commit'][:10]}"
             f"{', dirty' if report['environment']['dirty'] else ''})", "",
             f"triton {report['environment']['triton']}, {report['environment']['nvcc']}. Compiler figures: regs, "
             "spill bytes, stack, shared memory, static SASS counts (ptxas/cuobjdump/nvdisasm). Derived (not measured): "
             "occupancy (from per-SM limits); instructions per output element, a static estimate. Triton rows: each "
             "SASS loop body issued once per trip by every warp, with the kernel's own trip counts, the rest once per "
             "patch (see estimate()); the paper roofline from it (SASS issue vs HBM bytes only: the per-program "
             "scratch traffic, L1/L2-resident by design, and the quarter-rate conversions are not in it). "
             "Staged CUDA kernel (cuda-COLOUR-...-crop/down rows): shared memory includes the dynamic layout at P = 96 "
             "and the arch's opt-in limit; instructions per element weight every SASS instruction by the execution "
             "count of its source line when the same phases run on the CPU harness (benchmarks/cuda_line_counts.py, "
             f"a default plan on {len(MIX_IMAGE_SIZES)} photograph sizes), thread-instructions, also an estimate. "
             "Nothing here ran on a GPU.", "",
             "| kernel | arch | threads | regs | spill B | stack B | smem B | occupancy (limit) | SASS | SASS local "
             "| instr/element (est) | roofline % (est) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["kernels"]:
        lines.append(f"| {r['kernel']} | {r['arch']} | {r['threads_per_block']} | {r['regs']} | {r['spill_bytes']} | "
                     f"{r['stack']} | {r['shared']} | {100 * r['occupancy']:.1f}% ({r['limited_by']}) | {r['sass']} | "
                     f"{r['sass_local']} | {r['thread_instr_per_element_est']:.0f} | "
                     f"{r['roofline']['percent_of_copy_bandwidth']:.1f} |")
    if report.get("default_mix"):
        lines += ["", f"Default mix ({DOWN_SHARE:.2f} of patches down-sampled), H100 paper roofline "
                  f"({H100['sms']} SMs x {H100['schedulers']} issue/clk at {H100['clock_hz'] / 1e9} GHz, "
                  f"{H100['bandwidth'] / 1e12} TB/s):", "",
                  "Scratch: the per-program staging buffer of kernels/extract_patches.py, written and read back once per "
                  "value; on chip (L1/L2) while the resident programs' regions fit, through HBM where they do not "
                  "(8 programs per SM of ~240 KB each is ~250 MB, so expect much of it in HBM). The last column "
                  "charges every scratch byte to HBM: the worst case.", "",
                  "| kernel | arch | instr/element (est) | ns/patch issue | ns/patch HBM | roofline % | scratch KB/patch "
                  "| roofline % if scratch in HBM |", "|---|---|---|---|---|---|---|---|"]
        for r in report["default_mix"]:
            f = r["roofline"]
            worst = r.get("roofline_scratch_in_hbm")
            lines.append(f"| {r['kernel']} | {r['arch']} | {r['thread_instr_per_element_est']:.0f} | "
                         f"{f['ns_issue_bound']:.1f} | {f['ns_memory_bound']:.1f} | {f['percent_of_copy_bandwidth']:.1f} | "
                         + (f"{r['scratch_bytes_per_patch'] / 1000:.0f} | {worst['percent_of_copy_bandwidth']:.1f} |"
                            if worst else "- | - |"))
    return "\n".join(lines) + "\n"


def run_static(archs: list[int], full: bool, out: Path | None, cuda: bool = True, baseline: str | None = None,
               triton: bool = True) -> dict:
    report = {"environment": environment(), "kernels": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for arch in archs:
            if cuda:
                for row in compile_cuda(arch, work, full, baseline):
                    est = row.get("thread_instr_per_element_est")
                    print(f"{row['kernel']} {row['arch']}: {row['regs']} regs, spill {row['spill_bytes']} B, "
                          f"stack {row['stack']} B, smem {row['shared']} B, occupancy {100 * row['occupancy']:.1f}%"
                          + (f", {est:.1f} instr/element" if est is not None else ""), flush=True)
                    report["kernels"].append(row)
            for spec in triton_specs(full) if triton else []:
                row = compile_triton(spec, arch, work)
                print(f"{row['kernel']} {row['arch']}: {row['regs']} regs, spill {row['spill_bytes']} B, "
                      f"stack {row['stack']} B, smem {row['shared']} B, occupancy {100 * row['occupancy']:.1f}%, "
                      f"{row['sass']} SASS ({row['compile_s']} s)", flush=True)
                report["kernels"].append(row)
    estimate(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = f"gpu-static-{'' if triton else 'cuda-'}{report['environment']['date'][:10]}"
        if (out / f"{stem}.json").exists():  # another commit's report of the same day stays: name this one by commit
            previous = json.loads((out / f"{stem}.json").read_text())["environment"]["commit"]
            if previous != report["environment"]["commit"]:
                stem += f"-{report['environment']['commit'][:10]}"
        (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
        (out / f"{stem}.md").write_text(markdown(report))
        print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return report


def estimate(report: dict) -> None:
    """Instructions per output element and the paper roofline, per kernel and for the default mix.

    Estimate (not a dynamic count). Kernels that declare their loops (kernels/extract_patches.py: loop_trips):
    each loop body's SASS is issued once per trip by every warp, with the kernel's trip counts (the down path's
    averaged over the default plan's down sizes), and the rest once per patch; that overcounts one-off code, the
    rarely taken slow paths of IEEE divisions and square roots, and loops LLVM partially unrolled (all
    conservative); a loop unrolled away entirely fails the estimate rather than skew it. Older kernels: every
    static SASS instruction once per loop trip, which overcounts one-off code and the path a patch does not take,
    and undercounts loops inside the body, so read it to within ~2x."""
    for r in report["kernels"]:
        color = r["color"] if r["color"] in COLORS else "none"
        if r.get("instr_method"):  # the staged CUDA kernel: weighted by line counts (compile_cuda)
            r["roofline"] = roofline(r["thread_instr_per_element_est"] * 3 * PATCH * PATCH,
                                     bytes_per_patch(DTYPES[r["dtype"]][1], color))
            continue
        warps = r["threads_per_block"] // 32
        if r.get("warp_instr_per_patch_per_warp") is not None:
            r["warp_instr_per_patch_est"] = r["warp_instr_per_patch_per_warp"] * warps
        else:
            r["warp_instr_per_patch_est"] = r["sass"] * r["trips"] * warps
        r["thread_instr_per_element_est"] = r["warp_instr_per_patch_est"] * 32 / (3 * PATCH * PATCH)
        r["roofline"] = roofline(r["warp_instr_per_patch_est"] * 32, bytes_per_patch(DTYPES[r["dtype"]][1], color))
        if r.get("scratch_bytes_per_patch") is not None:  # the worst case: every scratch byte through HBM
            r["roofline_scratch_in_hbm"] = roofline(r["warp_instr_per_patch_est"] * 32, bytes_per_patch(
                DTYPES[r["dtype"]][1], color), r["scratch_bytes_per_patch"])
    mixes = {}
    for r in report["kernels"]:
        if r["path"] in ("crop", "down"):
            mixes.setdefault((r["arch"], r["kernel"].rsplit("-", 1)[0]), {})[r["path"]] = r
    report["default_mix"] = []
    for (arch, name), paths in sorted(mixes.items()):
        if len(paths) < 2:
            continue
        crop, down = paths["crop"], paths["down"]
        instr = (1 - DOWN_SHARE) * crop["warp_instr_per_patch_est"] + DOWN_SHARE * down["warp_instr_per_patch_est"]
        nbytes = bytes_per_patch(DTYPES[crop["dtype"]][1], crop["color"])
        row = {"kernel": name, "arch": arch, "warp_instr_per_patch_est": instr,
               "thread_instr_per_element_est": instr * 32 / (3 * PATCH * PATCH), "roofline": roofline(instr * 32, nbytes)}
        if crop.get("scratch_bytes_per_patch") is not None:
            scratch = (1 - DOWN_SHARE) * crop["scratch_bytes_per_patch"] + DOWN_SHARE * down["scratch_bytes_per_patch"]
            row["scratch_bytes_per_patch"] = scratch
            row["roofline_scratch_in_hbm"] = roofline(instr * 32, nbytes, scratch)
        report["default_mix"].append(row)


def spilling(report: dict) -> list[str]:
    return [f"{r['kernel']} {r['arch']}" for r in report["kernels"]
            if (r["spill_bytes"] or 0) > 0 or r["local"] > 0 or r["stack"] > 0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SM_LIMITS))
    parser.add_argument("--ci", action="store_true",
                        help="compile every specialisation for sm_90 only, write no report, and fail on any spill")
    parser.add_argument("--only", choices=["cuda", "triton"], default=None,
                        help="compile only these kernels (the report is then gpu-static-cuda-DATE for --only cuda)")
    parser.add_argument("--cuda-baseline", default=None, metavar="REV",
                        help="also compile the CUDA kernel of git revision REV (before/after figures)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    return run(args)


def run(args) -> int:
    archs = [90] if args.ci else args.arch
    only = getattr(args, "only", None)
    # CI compiles every specialisation (a spill can appear in one dtype and layout only), for sm_90 only
    report = run_static(archs, full=True, out=None if args.ci else Path(args.out),
                        baseline=getattr(args, "cuda_baseline", None), cuda=only != "triton", triton=only != "cuda")
    print(markdown(report))
    bad = spilling(report)
    if bad:
        print("gpu_static: spills / local memory in: " + ", ".join(bad), file=sys.stderr)
        return 1 if args.ci else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
