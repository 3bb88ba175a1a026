"""SASS thread-instructions per output element of the staged CUDA kernel, without a GPU: every SASS instruction of
the kernel is weighted by how often its source line runs on the GPU, and those counts come from running the same
phases (csrc/cuda/staged_phases.h) on the CPU in tests/cuda_phases_harness.cpp, built with gcov.

    per element = sum over SASS instructions of count(source line of the instruction) / (patches x 3 x P^2)

The harness runs every thread index of a block, so the count of a line in a phase is its per-thread count on the
GPU. Three corrections make the rest match the GPU: the control flow between phases (render_patch and what it
calls: make_patch) runs once per patch on the CPU but in every thread on the GPU, so its counts are multiplied by
the threads per block (render_channels and read_window by the work threads, finish_patch by the threads of the sums
and the store: BlockExec::split and within let the others go); BlockExec in extract_patches.cu never runs on the CPU, so its
phase lines take the harness's count of thread-phase executions and its reduction and kernel lines one per thread
and patch (the reduction's first tree one per summing thread, staged::kSumThreads, its second one per thread of
warp 0); lines compiled only for the device (intrinsics under __CUDA_ARCH__) take the count of the nearest
counted line above them. It counts thread-instructions (lanes masked off are not counted) and is an estimate:
the host and the device compilers place instructions on lines differently at the margins (loop headers,
hoisted loads). Loops with a literal trip count are unrolled on the GPU: each copy of a line in them counts the
CPU count divided by the trip count (the copies add up to the CPU count), unless the SASS keeps the loop (a
backward branch on its line).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "tests" / "cuda_phases_harness.cpp"
HEADER = REPO / "csrc" / "cuda" / "staged_phases.h"
MATH = REPO / "csrc" / "relpos_math.h"
KERNEL = REPO / "csrc" / "cuda" / "extract_patches.cu"
COLOR_CODES = {"none": 0, "drop": 1, "project": 2}
# Small functions (and the lambdas inside phases) inlined at many call sites: their instructions run as often as
# the line that calls them (the innermost line that is not in one of these), or never if their own line never ran
# (a branch not taken).
HELPERS = {HEADER.name: ["make_fastdiv", "fast_div", "pack_tap", "unpack_tap", "align16", "source_offset",
                         "output_offset", "float_bits", "bits_float", "convert", "store4", "store8", "load4", "load_entry",
                         "store_bytes4", "byte_to_float", "at", "by_channel",
                         "work_x", "work_y", "home_buffer", "buffer_at", "tree_sum32", "read_plan_row",
                         "image_meta"],
           MATH.name: ["mul_wide32", "philox4x32_10", "word_to_noise", "add_square", "centered_noise", "linear_taps",
                       "blend", "at", "make_geometry", "crop_pixel", "small_pixel", "patch_pixel",
                       "project_green_magenta", "pixel_values", "keeps_channel", "finish_stats"]}
# Functions whose body is the uniform control flow between phases (once per patch on the CPU, every thread on
# the GPU), apart from the bodies of the phase lambdas in them.
UNIFORM = {HEADER.name: ["render_patch", "render_patch_per_pixel", "make_patch"]}
# The same in the first staged::kWorkThreads threads, which render the patch while the others draw the noise
# (BlockExec::split).
UNIFORM_WORK = {HEADER.name: ["render_channels", "read_window"]}
# and after the resampling passes, which only the first staged::finish_threads run (the sums and the store)
UNIFORM_FINISH = {HEADER.name: ["finish_patch"]}


def build(work: Path, coverage: bool = True) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler for the CUDA phase harness")
    exe = work / "cuda_phases_harness"
    flags = ["-O0", "--coverage"] if coverage else ["-O2"]
    subprocess.run([cxx, "-std=c++17", *flags, "-ffp-contract=off", f"-I{REPO / 'csrc'}", str(HARNESS), "-o",
                    str(exe)], check=True, cwd=work)
    return exe


def layout(exe: Path, patch: int, threads: int, budget: int) -> dict:
    out = subprocess.run([str(exe), "layout", str(patch), str(threads), str(budget)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


OUT_TYPE_CODES = {"float32": 0, "bfloat16": 1, "float16": 2}  # ExtractParams' OutputType


def write_input(path: Path, data, meta, plan, patch: int, seed: int, color: str, threads: int, budget: int,
                dtype: str = "float32") -> None:
    """The harness's input (see read_input in tests/cuda_phases_harness.cpp): NCHW output of `dtype`, one order
    (the stores of 16-bit outputs take their own loop, so the counts are per output type)."""
    n, q = plan.shape[0], patch * patch
    strides = (3 * q, q, patch, 1)
    header = [data.numel(), meta.shape[0], n, patch, seed, COLOR_CODES[color], OUT_TYPE_CODES[dtype], *strides,
              n * 3 * q, threads,
              budget, 1, 0, 0]
    with open(path, "wb") as f:
        f.write(struct.pack("<17q", *header))
        f.write(data.numpy().tobytes())
        f.write(meta.numpy().astype("<i8").tobytes())
        f.write(plan.numpy().astype("<i4").tobytes())


def line_counts(exe: Path, work: Path, source: Path) -> dict[tuple[str, int], int]:
    """Runs the harness on `source` and returns gcov's execution count per (file name, line)."""
    for stale in work.glob("*.gcda"):
        stale.unlink()
    subprocess.run([str(exe), "run", str(source), str(work / "out.bin")], check=True, capture_output=True, cwd=work)
    gcda = next(work.glob("*.gcda"))
    subprocess.run(["gcov", "-j", "-o", str(work), str(gcda)], check=True, capture_output=True, cwd=work)
    # A line may be listed once per function it is compiled into (template instantiations: added up) and more
    # than once within one function (one entry per basic block, each with the line's count: taken once).
    per_function: dict[tuple[str, int, str], int] = {}
    for report in work.glob("*.gcov.json.gz"):
        for f in json.loads(gzip.decompress(report.read_bytes()))["files"]:
            name = Path(f["file"]).name
            for line in f["lines"]:
                key = (name, line["line_number"], line.get("function_name", ""))
                per_function[key] = max(per_function.get(key, 0), line["count"])
        report.unlink()
    counts: dict[tuple[str, int], int] = {}
    for (name, number, _), count in per_function.items():
        counts[name, number] = counts.get((name, number), 0) + count
    return counts


def sass_instructions(sass: str, symbol: str) -> tuple[list[tuple[int, tuple]], list[tuple[int, int, int]]]:
    """The instructions of function `symbol` in `nvdisasm -c -gi` output as (address, inlining chain of (file,
    line), innermost first), and its loops as (first address, address of the backward branch, branch index)."""
    instructions, labels, branches = [], {}, []
    inside, chain, fresh = False, [], False
    for text in sass.splitlines():
        m = re.match(r"\s*\.section\s+\.text\.([^,\s]+)", text)
        if m:
            inside = m.group(1) == symbol
            continue
        if not inside:
            continue
        m = re.search(r'//## File "([^"]+)", line (\d+)', text)
        if m:
            if not fresh:
                chain, fresh = [], True
            chain.append((Path(m.group(1)).name, int(m.group(2))))
            continue
        m = re.match(r"^(\.L_x_\d+):", text.strip())
        if m:
            labels[m.group(1)] = None  # address of the next instruction
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*)", text)
        if m and chain:
            fresh = False
            address = int(m.group(1), 16)
            for label, where in labels.items():
                if where is None:
                    labels[label] = address
            body = re.sub(r"^(@!?U?P\w+\s+)?", "", m.group(2)).split()
            if not body or body[0].startswith("NOP"):
                continue
            target = re.search(r"`\((\.L_x_\d+)\)", m.group(2))
            if body[0].startswith("BRA") and target:
                branches.append((address, target.group(1), len(instructions)))
            instructions.append((address, tuple(chain)))
    loops = [(labels[label], address, index) for address, label, index in branches
             if labels.get(label) is not None and labels[label] <= address]
    return instructions, loops


def function_lines(path: Path, names: list[str]) -> set[int]:
    """Line numbers of the definitions of the named functions (signature to the matching closing brace)."""
    lines = path.read_text().splitlines()
    found: set[int] = set()
    for i, text in enumerate(lines):
        code = text.split("//")[0]
        match = next((m for name in names for m in [re.search(rf"(^|[\s*&:])({name})(<[^>]*>)?\(", code)] if m), None)
        if match is None:
            continue
        before = code[:match.start(2)]
        if code.rstrip().endswith(";") or not re.search(r"\b(RELPOS_HD|__device__)\b", before):
            continue  # a declaration or a call: definitions here are RELPOS_HD or __device__
        depth, opened, j = 0, False, i
        while j < len(lines):
            body = lines[j].split("//")[0]
            depth += body.count("{") - body.count("}")
            opened = opened or "{" in body
            found.add(j + 1)
            if opened and depth <= 0:
                break
            if not opened and body.rstrip().endswith(";"):
                break
            j += 1
    return found


def lambda_lines(path: Path, marker: str) -> set[int]:
    """Lines of the bodies of the lambdas whose first line matches `marker` (a regular expression)."""
    lines = path.read_text().splitlines()
    found: set[int] = set()
    for i, text in enumerate(lines):
        if not re.search(marker, text):
            continue
        depth, j = 0, i
        while j < len(lines):
            depth += lines[j].count("{") - lines[j].count("}")
            found.add(j + 1)
            if depth <= 0:
                break
            j += 1
    return found


def unrolled_loops(path: Path) -> list[tuple[int, int, int]]:
    """Loops with a literal trip count (`for (int c = 0; c < 3; ++c)`) that the device compiler may unroll, as
    (for line, last line of the body, trip count); loops marked rolled (`unroll 1`) are left out. The CPU counts
    a line in such a body once per trip; unrolled, the GPU runs each copy once."""
    lines = path.read_text().splitlines()
    found = []
    for i, text in enumerate(lines):
        m = re.search(r"for \(int (\w+) = 0; \1 < (\d+); \+\+\1\)", text)
        if not m or any("unroll 1" in lines[j] or "RELPOS_ROLLED" in lines[j] for j in range(max(0, i - 3), i)):
            continue
        depth, j = 0, i
        while j < len(lines):
            body = lines[j].split("//")[0]
            depth += body.count("{") - body.count("}")
            if depth <= 0 and (body.rstrip().endswith(";") or body.rstrip().endswith("}")) and j >= i:
                break
            j += 1
        found.append((i + 1, j + 1, int(m.group(2))))
    return found


def device_counts(counts: dict, patches: int, threads: int, rolled: frozenset = frozenset()):
    """A function giving the GPU execution count of a SASS instruction's inlining chain (module docstring)."""
    helpers = {(path.name, line) for path in (HEADER, MATH) for line in function_lines(path, HELPERS[path.name])}
    helpers |= {(HEADER.name, line) for line in lambda_lines(HEADER, r"auto \w+ = \[&\]")}  # inside phases
    header_text = HEADER.read_text()
    header_lines, kernel_lines = header_text.splitlines(), KERNEL.read_text().splitlines()
    phase_lambdas = {(HEADER.name, line) for line in lambda_lines(HEADER, r"\[&\]\((int t, int T|const Sums& total)\)")}
    work_function = {(HEADER.name, line) for line in function_lines(HEADER, UNIFORM_WORK[HEADER.name])}
    finish_function = {(HEADER.name, line) for line in function_lines(HEADER, UNIFORM_FINISH[HEADER.name])}
    uniform = {(HEADER.name, line) for line in function_lines(HEADER, UNIFORM[HEADER.name])} - phase_lambdas
    uniform_work, uniform_finish = work_function - phase_lambdas, finish_function - phase_lambdas

    def constant(pattern):  # a constant of staged_phases.h
        return int(re.search(pattern, header_text).group(1))

    sum_threads = min(threads, constant(r"constexpr int kSumThreads = (\d+);"))
    work_threads = min(threads, constant(r"#define RELPOS_WORK_THREADS (\d+)"))
    finish_threads = max(sum_threads, min(threads, constant(r"#define RELPOS_NARROW_THREADS (\d+)")))
    # BlockExec's phase, reduce, split, join, within, barrier, thread_index and phase_threads bodies count as often
    # as the line that calls them (split's two branches by their own threads: split_share below).
    helpers |= {(KERNEL.name, line) for line in function_lines(KERNEL, ["phase", "reduce", "split", "join", "within",
                                                                          "barrier", "thread_index", "phase_threads"])}

    # The opening line of a lambda written over several lines (a phase's, or the body given to split or within):
    # gcov also charges it with blocks of the body or of the lambda's entry (~10 per call for a phase's, 2
    # for within's), so it takes the count of its first body line, once per call.
    opening = r"\[&\](\(int t, int T\))? \{$"
    openings = {(HEADER.name, line) for line in lambda_lines(HEADER, opening)
                if re.search(opening, header_lines[line - 1])}

    def host(key):
        if key in openings:
            return counts.get((key[0], key[1] + 1), 0)
        if key in counts:
            return counts[key]
        name, line = key  # a line compiled for the device only: the count of the nearest line above
        return max(((l, c) for (n, l), c in counts.items() if n == name and l < line), default=(0, 0))[1]

    def threads_of(key):
        """GPU threads per CPU execution of a line: the block (uniform), the work threads or 1 (phase lines)."""
        if key in uniform:
            return threads
        return work_threads if key in uniform_work else (finish_threads if key in uniform_finish else 1)

    def anchor(key):
        if key[0] == KERNEL.name:  # the kernel's own lines: once per thread and patch
            return patches * threads
        return host(key) * threads_of(key)

    def call_site(chain):
        return next((key for key in chain if key not in helpers), None)

    # literal-trip loops the device kept as loops (a backward branch on their line) are not unrolled
    loops = {path.name: [(first, last, trips) for first, last, trips in unrolled_loops(path)
                         if (path.name, first) not in rolled] for path in (HEADER, MATH, KERNEL)}

    def unrolled(frames):
        """The product of the trip counts of the unrolled loops around these frames (the anchor and outward)."""
        factor = 1
        for name, line in frames:
            for first, last, trips in loops.get(name, []):
                if first < line <= last:
                    factor *= trips
        return factor

    # BlockExec's second tree runs in warp 0 only: 32 threads per patch, not the block
    # (the lines after the test, which every thread runs)
    first_warp = {(KERNEL.name, line) for line in lambda_lines(KERNEL, r"if \(warp == 0\) \{")
                  if not re.search(r"if \(warp == 0\) \{", kernel_lines[line - 1])}

    # and its first tree in the warps that summed (staged::sum_threads)
    summing = {(KERNEL.name, line) for line in lambda_lines(KERNEL, r"if \(warp < sum_warps\) \{")
               if not re.search(r"if \(warp < sum_warps\) \{", kernel_lines[line - 1])}

    # BlockExec::split's two branches: the side's (from its call to the end) runs in the threads beyond the work
    # threads, main's (after `if (t < n) {`) in the work threads; the rest of split in the whole block.
    split_lines = sorted(function_lines(KERNEL, ["split"]))
    side_from = next(line for line in split_lines if kernel_lines[line - 1].strip().startswith("side(t - n"))
    main_from = next(line for line in split_lines if "if (t < n) {" in kernel_lines[line - 1])
    split_share = {(KERNEL.name, line): (threads - work_threads if line >= side_from else work_threads) / threads
                   for line in split_lines if line > main_from}

    def count(chain):
        if chain and chain[0] in split_share:
            return count(chain[1:] or ((KERNEL.name, 0),)) * split_share[chain[0]]
        if chain and chain[0] in (first_warp | summing):  # per call of reduce: 32 or sum_threads threads
            rest = chain[1:] or ((KERNEL.name, 0),)
            site = call_site(rest)
            # the call line's count is that of its phase lambda: once per calling thread (the block, or the
            # threads of render_channels or finish_patch)
            per_call = count(rest) / (work_threads if site in work_function else
                                      finish_threads if site in finish_function else threads)
            return per_call * (32 if chain[0] in first_warp else sum_threads)
        for depth, key in enumerate(chain):
            if key not in helpers:  # the call site; nothing if a line of the helper never ran (a branch not taken;
                # a device-only line has no count of its own and says nothing about that)
                if any(counts.get(inner) == 0 for inner in chain[:depth]):
                    return 0
                return anchor(key) / unrolled(chain[depth:])
        return patches * threads

    return count


def function_of_lines(path: Path) -> dict[int, str]:
    """The function (by name) each line of a source belongs to: the last definition line above it."""
    names, current = {}, "?"
    for i, text in enumerate(path.read_text().splitlines()):
        m = re.match(r"^(?:RELPOS_HD|__global__|template <[^>]*>\s*RELPOS_HD)[^(]*?\b(\w+)(?:<[^>]*>)?\(", text)
        if m:
            current = m.group(1)
        names[i + 1] = current
    return names


def instructions_per_element(sass: str, symbol: str, counts: dict, patches: int, patch: int, threads: int,
                             by_phase: dict | None = None) -> float:
    """`sass`: `nvdisasm -c -gi` output holding `symbol`; `counts`: line_counts() of a run over `patches`.
    With `by_phase` (a dict), also the share of each phase function (the outermost header function below the
    driver in the instruction's inlining chain).

    The instructions a `for` line places before its loop (the first test, the set-up) run once per entry, not
    once per iteration: they take the count of the nearest counted line above the loop."""
    instructions, loops = sass_instructions(sass, symbol)
    count = device_counts(counts, patches, threads, frozenset(instructions[index][1][0] for _, _, index in loops))
    sources = {path.name: path.read_text().splitlines() for path in (HEADER, MATH, KERNEL)}
    functions = function_of_lines(HEADER)

    def is_for(key):
        lines = sources.get(key[0])
        return lines is not None and 0 < key[1] <= len(lines) and lines[key[1] - 1].lstrip().startswith("for (")

    def phase_of(chain):
        names = [functions.get(line, "?") for name, line in chain if name == HEADER.name]
        phases = [n for n in names if n.startswith("phase_")]
        return phases[-1] if phases else (names[-1] if names else chain[-1][0])

    # for each for-line, the address ranges of the loops whose backward branch it owns
    ranges: dict = {}
    for first, last, index in loops:
        ranges.setdefault(instructions[index][1][0], []).append((first, last))
    total = 0
    elements = patches * 3 * patch * patch
    for address, chain in instructions:
        key = chain[0]
        original = chain
        if is_for(key) and not any(a <= address <= b for a, b in ranges.get(key, [])):
            above = max((l for (n, l) in counts if n == key[0] and l < key[1]), default=None)
            chain = ((key[0], above),) + chain[1:] if above else chain
        n = count(chain)
        total += n
        if by_phase is not None:
            phase = phase_of(original)
            by_phase[phase] = by_phase.get(phase, 0) + n / elements
    return total / elements
