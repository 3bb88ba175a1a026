"""The arithmetic and parsing of benchmarks/gpu_static.py (the compiles themselves run in CI via --ci)."""

import re

import gpu_static
import pytest


def test_occupancy_from_registers_shared_memory_and_threads():
    assert gpu_static.occupancy(90, 64, 32, 128)["occupancy"] == 0.5  # 65536 / (64 * 128) = 8 blocks of 4 warps
    assert gpu_static.occupancy(90, 120, 1456, 256) == {"blocks_per_sm": 2, "occupancy": 0.25, "limited_by": "registers"}
    assert gpu_static.occupancy(90, 255, 0, 256)["occupancy"] == 0.125
    assert gpu_static.occupancy(80, 32, 110_000, 256) == {"blocks_per_sm": 1, "occupancy": 0.125,
                                                          "limited_by": "shared memory"}
    assert gpu_static.occupancy(90, 32, 110_000, 256)["blocks_per_sm"] == 2  # sm_90 has 228 KB per SM


def test_spills_are_read_from_ptxas_and_fail_the_check():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    7720 bytes stack frame, 35172 bytes spill stores, 48688 bytes spill loads\n")
    assert gpu_static.ptxas_spills(log) == {"k": 35172 + 48688}
    clean = {"kernel": "a", "arch": "sm_90", "spill_bytes": 0, "local": 0, "stack": 0}
    assert gpu_static.spilling({"kernels": [clean]}) == []
    assert gpu_static.spilling({"kernels": [clean, dict(clean, kernel="b", stack=8)]}) == ["b sm_90"]


def test_line_count_estimate_reads_sass_loops_and_weights_lines(tmp_path):
    """cuda_line_counts: instructions and loops from nvdisasm -gi text; a loop body counts per iteration, the set-up
    a for line places before its loop once per entry, a helper's instructions as often as its call site."""
    clc = gpu_static.line_counts_module()
    header = clc.HEADER.read_text().splitlines()
    for_line = next(i + 1 for i, t in enumerate(header) if "for (int py = band_begin + first; py < band_end" in t)
    body_line = for_line + 1
    helper_line = next(i + 1 for i, t in enumerate(header) if "RELPOS_HD float byte_to_float(" in t)
    name = clc.HEADER.name
    where = lambda line, *outer: "".join(  # noqa: E731
        f'\t//## File "/x/{name}", line {line}' + (f' inlined at "/x/{name}", line {o}' if o else "") + "\n"
        for line, o in [(line, outer[0] if outer else None)] + [(o, None) for o in outer])
    sass = ("\t.section\t.text.k,\"ax\",@progbits\n"
            + where(for_line) + "        /*0000*/                   ISETP.GE.AND P0, PT, R1, R2, PT ;\n"
            + ".L_x_1:\n"
            + where(body_line) + "        /*0010*/                   LDS R3, [R4] ;\n"
            + where(helper_line, body_line) + "        /*0020*/                   FADD R3, R3, -8388608 ;\n"
            + where(for_line) + "        /*0030*/              @!P0 BRA `(.L_x_1) ;\n")
    instructions, loops = clc.sass_instructions(sass, "k")
    assert [a for a, _ in instructions] == [0, 0x10, 0x20, 0x30]
    assert loops == [(0x10, 0x30, 3)]
    assert instructions[2][1] == ((name, helper_line), (name, body_line))
    counts = {(name, for_line - 1): 10, (name, for_line): 110, (name, body_line): 100, (name, helper_line): 999}
    per_element = clc.instructions_per_element(sass, "k", counts, patches=1, patch=2, threads=32)
    # set-up once per entry (10), body and helper per iteration (100 each), the branch per test (110)
    assert per_element == (10 + 100 + 100 + 110) / (3 * 2 * 2)



def test_control_flow_counts_only_the_threads_still_in_the_block():
    """The staged kernel's control flow runs in every thread of the block up to the split after the header phase
    (render_patch), then in the work threads only (render_channels: BlockExec::split lets the others go), then in
    the threads of the sums and the store (finish_patch)."""
    clc = gpu_static.line_counts_module()
    header = clc.HEADER.read_text().splitlines()
    name = clc.HEADER.name

    def line_of(text, after):
        start = next(i for i, t in enumerate(header) if after in t)
        return next(i + 1 for i in range(start, len(header)) if text in header[i])

    block_line = line_of("Patch s = make_patch(p, n, ", "RELPOS_HD void render_patch(")
    work_line = line_of("const int band_rows =", "RELPOS_HD void render_channels(")
    finish_line = line_of("float* const values[3] =", "RELPOS_HD void finish_patch(")
    sass = "\t.section\t.text.k,\"ax\",@progbits\n" + "".join(
        f'\t//## File "/x/{name}", line {line}\n        /*{16 * k:04x}*/                   IADD3 R1, R1, 1, RZ ;\n'
        for k, line in enumerate((block_line, work_line, finish_line)))
    counts = {(name, line): 1 for line in (block_line, work_line, finish_line)}  # once per patch on the CPU
    per_element = clc.instructions_per_element(sass, "k", counts, patches=1, patch=2, threads=1024)
    text = clc.HEADER.read_text()
    work = int(re.search(r"#define RELPOS_WORK_THREADS (\d+)", text).group(1))
    finish = max(int(re.search(r"constexpr int kSumThreads = (\d+);", text).group(1)),
                 int(re.search(r"#define RELPOS_NARROW_THREADS (\d+)", text).group(1)))
    assert (work, finish) == (512, 256)
    assert per_element == (1024 + work + finish) / (3 * 2 * 2)


def test_the_opening_line_of_a_body_given_to_within_counts_once_per_call():
    """gcov charges the line `exec.within(n, [&] {` with the call and with the lambda's entry (2 per call): it
    takes the count of the body's first line instead, once per call and thread still in the block."""
    clc = gpu_static.line_counts_module()
    header = clc.HEADER.read_text().splitlines()
    name = clc.HEADER.name
    start = next(i for i, t in enumerate(header) if "RELPOS_HD void render_channels(" in t)
    opening = next(i + 1 for i in range(start, len(header)) if "exec.within(" in header[i])
    assert header[opening - 1].rstrip().endswith("[&] {")
    sass = ("\t.section\t.text.k,\"ax\",@progbits\n"
            f'\t//## File "/x/{name}", line {opening}\n        /*0000*/                   IADD3 R1, R1, 1, RZ ;\n')
    counts = {(name, opening): 2, (name, opening + 1): 1}  # one patch: the call and the lambda's entry
    per_element = clc.instructions_per_element(sass, "k", counts, patches=1, patch=2, threads=1024)
    assert per_element == 512 / (3 * 2 * 2)  # once, in each of the 512 work threads


def test_the_branches_of_split_count_their_own_threads():
    """BlockExec::split: its side branch runs in the threads beyond the work threads, its main branch in the work
    threads, though both are inlined at one render_patch line (which every thread of the block runs)."""
    clc = gpu_static.line_counts_module()
    header, kernel = clc.HEADER.read_text().splitlines(), clc.KERNEL.read_text().splitlines()
    start = next(i for i, t in enumerate(header) if "RELPOS_HD void render_patch(" in t)
    call = next(i + 1 for i in range(start, len(header)) if "exec.split(" in header[i])
    side = next(i + 1 for i, t in enumerate(kernel) if t.strip().startswith("side(t - n"))
    main = next(i + 1 for i, t in enumerate(kernel) if t.strip() == "active = n;" and "if (t < n) {" in kernel[i - 1])
    h, k = clc.HEADER.name, clc.KERNEL.name
    sass = "\t.section\t.text.k,\"ax\",@progbits\n" + "".join(
        f'\t//## File "/x/{k}", line {line} inlined at "/x/{h}", line {call}\n\t//## File "/x/{h}", line {call}\n'
        f"        /*{16 * n:04x}*/                   IADD3 R1, R1, 1, RZ ;\n" for n, line in enumerate((side, main)))
    per_element = clc.instructions_per_element(sass, "k", {(h, call): 1}, patches=1, patch=2, threads=1024)
    assert per_element == (512 + 512) / (3 * 2 * 2)  # 1024 - 512 side threads, 512 work threads


def test_the_thread_index_read_counts_as_often_as_the_phase_that_reads_it():
    """BlockExec::thread_index (a volatile read in every phase) runs once per call, in the threads that run the
    phase: as often as its call site, not once per thread of the block and patch."""
    clc = gpu_static.line_counts_module()
    header, kernel = clc.HEADER.read_text().splitlines(), clc.KERNEL.read_text().splitlines()
    read = next(i + 1 for i, t in enumerate(kernel) if "%%tid.x" in t)
    phase = next(i + 1 for i, t in enumerate(header) if "phase_stage(t, T, smem, L, s, c); });" in t)
    h, k = clc.HEADER.name, clc.KERNEL.name
    sass = ("\t.section\t.text.k,\"ax\",@progbits\n"
            f'\t//## File "/x/{k}", line {read} inlined at "/x/{h}", line {phase}\n\t//## File "/x/{h}", line {phase}\n'
            "        /*0000*/                   S2R R0, SR_TID.X ;\n")
    per_element = clc.instructions_per_element(sass, "k", {(h, phase): 5 * 512}, patches=1, patch=2, threads=1024)
    assert per_element == 5 * 512 / (3 * 2 * 2)  # five stage phases of 512 threads, not 1024 once

def _listing(text):
    """A SASS listing from a compact description: 'L:name' a label, 'OP' an instruction, 'BRA:name' a branch."""
    out = []
    for word in text.split():
        if word.startswith("L:"):
            out.append(("label", word[2:]))
        elif word.startswith("BRA:"):
            out.append(("instr", "BRA", word[4:]))
        else:
            out.append(("instr", word, None))
    return out


def test_loop_bodies_are_weighted_by_their_own_trip_counts():
    # patch loop (a) holding two phase loops (b: 3 instructions, c: 2), then the exit's self-branch
    listing = _listing("S L:a X L:b Y Y BRA:b Z L:c W BRA:c BRA:a EXIT L:e BRA:e")
    assert gpu_static.loops(listing) == [(2, 4), (6, 7), (1, 8)]
    # 11 instructions in all; b runs 10 times (9 extra trips of 3), c 5 times (4 extra of 2)
    assert gpu_static.weighted_instructions(listing, [10, 5]) == 11 + 9 * 3 + 4 * 2
    with pytest.raises(RuntimeError, match="does not match"):  # a loop LLVM unrolled away is not silently lost
        gpu_static.weighted_instructions(listing, [10, 5, 7])


def test_a_last_loop_unrolled_whole_counts_its_copies_once_each():
    """The normalise loop (the last, 2 trips here) unrolled by ptxas: its copies (3 stores each) follow the last
    remaining loop and count once each; without the stores there, the missing loop is not accepted."""
    unrolled = _listing("S L:a X L:b Y Y BRA:b STG STG STG STG STG STG BRA:a EXIT L:e BRA:e")
    assert gpu_static.weighted_instructions(unrolled, [10, 2]) == 14 + 9 * 3
    elsewhere = _listing("S L:a X STG STG STG STG STG STG L:b Y Y BRA:b Z BRA:a EXIT L:e BRA:e")
    with pytest.raises(RuntimeError, match="does not match"):
        gpu_static.weighted_instructions(elsewhere, [10, 2])


def test_bfloat16_output_is_rounded_to_nearest_even_by_the_gpu_conversion(tmp_path):
    """On a GPU the Triton kernel converts to bfloat16 in hardware (kernels/extract_patches.py: _cast), where the
    CPU interpreter, which truncates, rounds by hand: the compiled PTX must use the round-to-nearest-even conversion,
    the one the hand rounding and the C++ op implement, and no other. (Compiled in a fresh process: under
    TRITON_INTERPRET=1, which the tests set, the kernel cannot be compiled.)"""
    pytest.importorskip("triton")
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path
    here = Path(__file__).parent
    code = (f"import sys; sys.path.insert(0, {str(here)!r}); import gpu_static, pathlib; "
            "spec = gpu_static.TritonSpec('drop', 'bfloat16', False, False); "
            f"gpu_static.compile_triton(spec, 90, pathlib.Path({str(tmp_path)!r}))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
    ptx = (tmp_path / "triton-drop-bfloat16-nchw-crop-sm90.ptx").read_text()
    conversions = set(re.findall(r"cvt\.\w+\.bf16(?:x2)?\.f32", ptx))
    assert conversions and conversions <= {"cvt.rn.bf16x2.f32", "cvt.rn.bf16.f32"}, conversions
