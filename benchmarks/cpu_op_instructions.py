# One CPU-op call (1 thread, default plan, colour drop, 8 synthetic images) for callgrind: instructions per output
# element = Ir / (2 * ELEMENTS) with
#   valgrind --tool=callgrind --toggle-collect="relpos::*extract*" python benchmarks/cpu_op_instructions.py fp32|bf16
import sys, torch
torch.set_num_threads(1)
from relpos.bench import make_inputs
from relpos.config import PatchConfig
b = make_inputs(1, 8, PatchConfig(), torch.device("cpu"), seed=0)[0]
plan, packed = b["plan"], b["packed"]
dtype = torch.float32 if sys.argv[1] == "fp32" else torch.bfloat16
out = torch.empty((plan.num_patches, 3, plan.patch_size, plan.patch_size), dtype=dtype)
op = lambda: torch.ops.relpos.extract_patches_out(packed.data, packed.meta, plan.patches, plan.seed, "drop", out)
op()
print("ELEMENTS", out.numel(), flush=True)
op()
