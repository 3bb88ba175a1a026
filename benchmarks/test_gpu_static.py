"""The arithmetic and parsing of benchmarks/gpu_static.py (the compiles themselves run in CI via --ci)."""

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
