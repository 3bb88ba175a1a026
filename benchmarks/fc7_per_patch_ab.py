"""A/B of the relative-position step's forward+backward: fc7 on concatenated pairs (main) vs per patch (fc7 branch)."""
import sys, time, torch
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
from relpos.models import build_model, head_input
import torch.nn.functional as F
torch.manual_seed(0)
model = build_model("caffenet", 0.25).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.5)
N, M = 128, 645
patches = torch.randn(N, 3, 96, 96).contiguous(memory_format=torch.channels_last)
index = torch.randint(0, N, (M, 2)); labels = torch.randint(0, 8, (M,))
def step(per_patch):
    features = model.tower(patches)
    logits = model.head.classify(features, index) if per_patch else model.head(head_input(features, index))
    loss = F.cross_entropy(logits, labels)
    opt.zero_grad(); loss.backward(); opt.step()
# same function up to rounding
with torch.no_grad():
    model.eval(); f = model.tower(patches)
    a, b = model.head(head_input(f, index)), model.head.classify(f, index); model.train()
print("max |diff| of logits", float((a - b).abs().max()), "scale", float(a.abs().max()))
for w in range(3): step(False); step(True)
times = {False: [], True: []}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 20):
    for pp in (False, True):
        t = time.perf_counter(); step(pp); times[pp].append(time.perf_counter() - t)
import statistics as st
for pp in (False, True):
    print("per-patch fc7" if pp else "concat fc7   ", "median %.1f ms  min %.1f ms" % (1e3 * st.median(times[pp]), 1e3 * min(times[pp])), "threads", torch.get_num_threads())
