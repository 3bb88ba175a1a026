"""The arithmetic and parsing of benchmarks/gpu_static.py (the compiles themselves run in CI via --ci)."""

import gpu_static


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
