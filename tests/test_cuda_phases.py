"""The staged CUDA kernel's phases (csrc/cuda/staged_phases.h), run on the CPU by tests/cuda_phases_harness.cpp:
every thread index of a block, phase by phase, in forward, reverse and shuffled order (the same bytes required),
with AddressSanitizer and UBSan, compared bit for bit with the C++ op.

No GPU is needed: the harness compiles the header with the host compiler. Shared-memory budgets are those of an
H100 (227 KB per block) and an A100 (163 KB), one that leaves no room for the source window (the h pass reads
global memory) and one too small for the staged buffers (the per-pixel path)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

import relpos  # noqa: F401  (loads the C++ op)
from relpos.reference import linear_taps

REPO = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).with_name("cuda_phases_harness.cpp")
COLOR_CODES = {"none": 0, "drop": 1, "project": 2}
OUT_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
SM90, SM80 = 232448, 166912  # cudaDevAttrMaxSharedMemoryPerBlockOptin of an H100 and an A100
THREADS, PIXEL_THREADS = 1024, 256  # kThreads and kPixelThreads of extract_patches.cu
ALL_ORDERS = 7


def layout(harness: Path, patch: int, budget: int) -> dict:
    """staged_phases.h's make_layout for a 1024-thread block (staged, total, window offset and bytes)."""
    out = subprocess.run([str(harness), "layout", str(patch), str(THREADS), str(budget)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def no_window_budget(harness: Path, patch: int) -> int:
    """A budget with the buffers and tap tables but only the minimal window (2 KB: the reduction's scratch)."""
    budget = layout(harness, patch, SM90)["window"] + 2048
    assert layout(harness, patch, budget)["staged"]
    return budget


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("harness") / "cuda_phases_harness"
    cmd = [cxx, "-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           "-fno-omit-frame-pointer", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", f"-I{REPO / 'csrc'}",
           str(SOURCE), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    result = subprocess.run([str(exe), "selftest"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


def pack(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    packed = relpos.pack_images(images)
    return packed.data, packed.meta


def render(harness: Path, tmp: Path, data, meta, plan, patch, seed, color, dtype, out_strides, *, threads=THREADS,
           budget=SM90, orders=ALL_ORDERS, out_offset=0, plan_error: list | None = None) -> torch.Tensor:
    """The harness's output as a tensor with out_strides (element `out_offset` of a poisoned buffer onwards);
    the kernel's plan error flag is appended to `plan_error` when given."""
    n = plan.shape[0]
    elements = out_offset + 1 + sum((s - 1) * st for s, st in zip((n, 3, patch, patch), out_strides))
    header = [data.numel(), meta.shape[0], n, patch, seed, COLOR_CODES[color], OUT_TYPES[dtype], *out_strides,
              elements, threads, budget, orders, 1234, out_offset]
    source = tmp / "input.bin"
    with open(source, "wb") as f:
        f.write(struct.pack("<17q", *header))
        f.write(data.numpy().tobytes())
        f.write(meta.numpy().astype("<i8").tobytes())
        f.write(plan.numpy().astype("<i4").tobytes())
    target = tmp / "output.bin"
    result = subprocess.run([str(harness), "run", str(source), str(target)], capture_output=True, text=True,
                            env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
    assert result.returncode == 0, result.stderr[-4000:]
    if plan_error is not None:
        plan_error.append(int(result.stdout.rsplit("plan_error=", 1)[1]))
    raw = bytearray(target.read_bytes())
    buffer = torch.frombuffer(raw, dtype=dtype)
    assert buffer.numel() == elements
    return buffer.as_strided((n, 3, patch, patch), tuple(out_strides), out_offset)


def reference(data, meta, plan, patch, seed, color, dtype, out_strides, out_offset=0) -> torch.Tensor:
    n = plan.shape[0]
    elements = out_offset + 1 + sum((s - 1) * st for s, st in zip((n, 3, patch, patch), out_strides))
    out = torch.full((elements,), float("nan"), dtype=dtype).as_strided((n, 3, patch, patch), out_strides, out_offset)
    torch.ops.relpos.extract_patches_out(data, meta, plan, seed, color, out)
    return out


def strides_for(layout: str, n: int, patch: int) -> tuple[int, ...]:
    q = patch * patch
    return {"nchw": (3 * q, q, patch, 1), "nhwc": (3 * q, 1, 3 * patch, 3),
            "cnhw": (q, n * q, patch, 1)}[layout]  # cnhw: neither run layout, element by element


def check(harness, tmp, images, rows, patch, color, dtype=torch.float32, layout="nchw", seed=99, **kwargs):
    data, meta = pack(images)
    plan = torch.tensor(rows, dtype=torch.int32).reshape(-1, 7)
    strides = strides_for(layout, plan.shape[0], patch)
    offset = kwargs.pop("out_offset", 0)
    flag = []
    got = render(harness, tmp, data, meta, plan, patch, seed, color, dtype, strides, out_offset=offset,
                 plan_error=flag, **kwargs)
    want = reference(data, meta, plan, patch, seed, color, dtype, strides, out_offset=offset)
    assert not torch.isnan(got.float()).any(), "an output element was left unwritten (NaN poison survived)"
    assert torch.equal(got, want)
    assert flag == [0], "a plan with every row in range raised the plan error flag"


def random_rows(generator, sizes, patch, count, down_share=1 / 3):
    """Random plan rows over images of `sizes`: resized from 1/8 to 3x (at least the patch), any corner
    (flush ones included), any kept channel, a third down-sampled (sizes 1..patch)."""
    rows = []
    for _ in range(count):
        image = int(torch.randint(len(sizes), (1,), generator=generator))
        h, w = sizes[image]
        scale = float(torch.empty(()).uniform_(0.125, 3.0, generator=generator))
        rh, rw = max(patch, round(h * scale)), max(patch, round(w * scale))
        corner = int(torch.randint(4, (1,), generator=generator))
        top = 0 if corner == 0 else (rh - patch if corner == 1 else int(torch.randint(rh - patch + 1, (1,),
                                                                                         generator=generator)))
        left = 0 if corner == 0 else (rw - patch if corner == 2 else int(torch.randint(rw - patch + 1, (1,),
                                                                                          generator=generator)))
        down = 0
        if float(torch.rand((), generator=generator)) < down_share:
            down = int(torch.randint(1, patch + 1, (1,), generator=generator))
        rows.append([image, rh, rw, top, left, int(torch.randint(3, (1,), generator=generator)), down])
    return rows


def random_images(generator, sizes):
    """HWC and CHW images alternately (the two layouts pack_images makes)."""
    images = []
    for i, (h, w) in enumerate(sizes):
        image = torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8)
        images.append(image if i % 2 == 0 else image.permute(2, 0, 1).contiguous())
    return images


SIZES = [(120, 150), (37, 50), (300, 260), (96, 97), (700, 90), (5, 400)]


@pytest.mark.parametrize("budget", ["sm90", "sm80", "no_window"])
@pytest.mark.parametrize("color", ["none", "drop", "project"])
def test_random_plans_bit_for_bit(harness, tmp_path, generator, color, budget):
    patch = 96
    rows = random_rows(generator, SIZES, patch, 6)
    budget_bytes = {"sm90": SM90, "sm80": SM80, "no_window": no_window_budget(harness, patch)}[budget]
    dtype = {"none": torch.float32, "drop": torch.bfloat16, "project": torch.float16}[color]
    layout = "nhwc" if budget == "sm80" else "nchw"
    check(harness, tmp_path, random_images(generator, SIZES), rows, patch, color, dtype, layout,
          seed=int(torch.randint(2**62, (1,), generator=generator)), budget=budget_bytes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "cnhw"])
def test_every_dtype_and_layout(harness, tmp_path, generator, dtype, layout):
    patch = 20  # small patches: every store path and conversion, cheaply
    rows = random_rows(generator, SIZES, patch, 8, down_share=0.5)
    check(harness, tmp_path, random_images(generator, SIZES), rows, patch, "project", dtype, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unaligned_output_takes_narrow_stores(harness, tmp_path, generator, dtype):
    rows = random_rows(generator, SIZES, 16, 3)
    check(harness, tmp_path, random_images(generator, SIZES), rows, 16, "drop", dtype, "nchw", out_offset=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("patch,out_offset", [(16, 0), (16, 4), (6, 0)])
def test_16_bit_outputs_eight_or_four_elements_per_store(harness, tmp_path, generator, dtype, patch, out_offset):
    """16-bit NCHW outputs take eight elements per store where P^2 % 8 == 0 and the patch is 16-byte aligned,
    four where it is 8-byte aligned (offset 4) or P^2 % 8 == 4 (P = 6): the same bytes in every case."""
    rows = random_rows(generator, SIZES, patch, 5)
    check(harness, tmp_path, random_images(generator, SIZES), rows, patch, "drop", dtype, "nchw", out_offset=out_offset)


@pytest.mark.parametrize("down,corner", [(10, "top-left"), (95, "bottom-right"), (96, "bottom-right")])
def test_down_sizes_at_both_ends_flush_with_the_edges(harness, tmp_path, generator, down, corner):
    """Down sizes 10 and 95 (P = 96), and 96: the identity, whose last down-sampling tap is clamped (i1 == i0)."""
    images = random_images(generator, [(130, 150), (90, 70)])
    rh, rw = 140, 160
    top, left = (0, 0) if corner == "top-left" else (rh - 96, rw - 96)
    rows = [[0, rh, rw, top, left, 1, down], [1, 96, 96, 0, 0, 2, down], [1, 400, 97, 304, 1, 0, down]]
    for color in ("none", "drop"):
        check(harness, tmp_path, images, rows, 96, color)


def _first_tap(dst: int, in_size: int, out_size: int) -> int:
    """The first source index output `dst` of a resize reads (the spec's linear_taps)."""
    return int(linear_taps(in_size, out_size)[0][dst])


def test_a_window_that_fills_its_budget_exactly(harness, tmp_path, generator):
    """The h pass reads the byte after each tap's first, which for a tap clamped at the image's right edge (weight
    0) lies past the window's rows: make_window asks for a spare word. A crop flush with the bottom-right corner of
    an upscaled square image (its last taps clamped), whose square window has rows of whole words, with a budget
    whose window holds it exactly (the h pass then reads global memory) and one 16 bytes larger (the window)."""
    patch = 64  # the window (at most P + 1 columns when upscaled) must exceed the minimal 2 KB
    side, resized = next((side, resized) for side in range(48, 65) for resized in range(side + 1, 3 * side)
                         if resized >= patch and (side - _first_tap(resized - patch, side, resized)) % 4 == 0
                         and (side - _first_tap(resized - patch, side, resized)) ** 2 >= 2048)
    window = (side - _first_tap(resized - patch, side, resized)) ** 2  # rows x columns, a multiple of 16
    rows = [[0, resized, resized, resized - patch, resized - patch, k, 0] for k in range(3)]
    exact = layout(harness, patch, SM90)["window"] + window
    assert layout(harness, patch, exact)["window_bytes"] == window
    for budget in (exact, exact + 16):
        check(harness, tmp_path, random_images(generator, [(side, side)]), rows, patch, "none", budget=budget)


def test_planar_last_image_window_ends_at_the_buffer_end(harness, tmp_path, generator):
    """The staging's fast loops read a window word at four constant offsets only when all four columns lie in the
    window: a planar (CHW) image, last in the packed buffer, whose window ends at its bottom-right corner with a
    partial last word (ASan reports a read past the buffer if the boundary is off by one)."""
    patch = 32
    h, w, rh, rw = next((h, w, rh, rw) for h in range(33, 60) for w in range(33, 60) for rh in range(patch, 2 * h)
                        for rw in range(patch, 2 * w)
                        if (w - _first_tap(rw - patch, w, rw)) % 4 == 3 and (h - _first_tap(rh - patch, h, rh)) > 1)
    images = random_images(generator, [(20, 20), (h, w)])  # the second (last) one is CHW
    rows = [[1, rh, rw, rh - patch, rw - patch, 2, 0]]
    for color in ("none", "drop"):
        check(harness, tmp_path, images, rows, patch, color)


def test_images_smaller_than_the_window(harness, tmp_path, generator):
    """Sources narrower and shorter than the patch (the window is the whole image), single rows and columns."""
    sizes = [(1, 1), (1, 200), (200, 1), (7, 3), (40, 95)]
    rows = [[0, 96, 96, 0, 0, 0, 0], [1, 96, 300, 0, 204, 1, 0], [2, 250, 96, 154, 0, 2, 7],
            [3, 99, 101, 3, 5, 0, 96], [4, 96, 96, 0, 0, 1, 48], [4, 97, 200, 1, 104, 2, 0]]
    check(harness, tmp_path, random_images(generator, sizes), rows, 96, "project")


def test_strong_down_scaling_reads_global_memory(harness, tmp_path, generator):
    """Resized to a tenth: the window (1000 x 1000) fits no shared memory; h rows are taken in pairs."""
    images = random_images(generator, [(1000, 1100)])
    rows = [[0, 100, 110, 2, 14, 0, 0], [0, 100, 110, 4, 0, 1, 33], [0, 180, 96, 84, 0, 2, 0]]
    check(harness, tmp_path, images, rows, 96, "none", budget=SM80)


@pytest.mark.parametrize("patch", [1, 5, 17, 33, 95, 118, 130])
def test_patch_sizes(harness, tmp_path, generator, patch):
    """Odd sizes (Philox blocks straddle channels), the largest staged size on an H100 (118) and one that takes
    the per-pixel path everywhere (130, with the per-pixel kernel's 256 threads)."""
    sizes = [(patch + 3, patch + 1), (2 * patch + 1, 3 * patch)]
    rows = random_rows(generator, sizes, patch, 2, down_share=0.5)
    rows.append([0, patch, patch, 0, 0, 1, max(1, patch // 2)])
    threads = PIXEL_THREADS if patch > 118 else THREADS
    for color in ("drop", "project"):
        check(harness, tmp_path, random_images(generator, sizes), rows, patch, color, threads=threads)


def test_per_pixel_path_when_the_buffers_do_not_fit(harness, tmp_path, generator):
    rows = random_rows(generator, SIZES, 96, 3, down_share=0.5)
    for color in ("none", "drop"):
        check(harness, tmp_path, random_images(generator, SIZES), rows, 96, color, threads=PIXEL_THREADS,
              budget=40_000)


def test_single_patch_plan(harness, tmp_path, generator):
    check(harness, tmp_path, random_images(generator, [(23, 19)]), [[0, 96, 96, 0, 0, 2, 3]], 96, "drop")


def test_thousands_of_patches(harness, tmp_path, generator):
    """3000 patches (one thread order: this is about indexing by patch, not about races)."""
    sizes = [(60, 80), (33, 20), (100, 40)]
    rows = random_rows(generator, sizes, 12, 3000)
    check(harness, tmp_path, random_images(generator, sizes), rows, 12, "drop", torch.bfloat16, "nhwc", orders=1)


@pytest.mark.parametrize("column, value", [(0, 7), (0, -1), (3, 10_000), (4, -3), (1, 40_000), (5, 3), (6, 97),
                                           (6, -1)])
def test_rows_out_of_range_render_the_placeholder_and_raise_the_flag(harness, tmp_path, generator, column, value):
    """A device-resident plan is checked by the kernel itself, row by row: a bad row is rendered from the
    placeholder (image 0 resized to the patch, at the origin) with no read outside the batch (ASan), the flag is
    raised, and the other rows are untouched."""
    sizes = [(120, 90), (70, 130)]
    images = random_images(generator, sizes)
    data, meta = pack(images)
    rows = random_rows(generator, sizes, 32, 6)
    bad = [list(r) for r in rows]
    bad[2][column] = value
    plan = torch.tensor(bad, dtype=torch.int32)
    safe = plan.clone()
    safe[2] = torch.tensor([0, 32, 32, 0, 0, 0, 0], dtype=torch.int32)
    strides = strides_for("nchw", 6, 32)
    flag = []
    got = render(harness, tmp_path, data, meta, plan, 32, 5, "drop", torch.float32, strides, plan_error=flag)
    assert flag == [1]
    assert torch.equal(got, reference(data, meta, safe, 32, 5, "drop", torch.float32, strides))
