"""The ops trace under torch.compile(fullgraph=True) through their fake kernels, and agree with eager."""

import pytest
import torch

import relpos
from relpos import backends

from conftest import SMALL, random_images, subset


def _batch(generator, rows=None):
    images = random_images(generator, 3)
    packed = relpos.pack_images(images)
    plan = relpos.sample_plan(packed.sizes, SMALL, generator=generator)
    return packed, (plan if rows is None else subset(plan, slice(0, rows)))


def test_cpu_op_compiles_fullgraph(generator):
    packed, plan = _batch(generator)

    def step(data, meta, patches):
        x = torch.ops.relpos.extract_patches(data, meta, patches, plan.seed, "drop", plan.patch_size, torch.float32, True)
        return (x * x).mean(dim=(1, 2, 3)), x.amax()

    compiled = torch.compile(step, fullgraph=True)
    eager = step(packed.data, packed.meta, plan.patches)
    traced = compiled(packed.data, packed.meta, plan.patches)
    torch.testing.assert_close(traced, eager)
    torch.testing.assert_close(traced[0], torch.full_like(traced[0], 2500.0), rtol=1e-4, atol=0)


@pytest.mark.skipif(not backends.triton_runs_on(torch.device("cpu")) and not torch.cuda.is_available(),
                    reason="triton unavailable")
def test_triton_op_compiles_fullgraph(generator):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    packed, plan = _batch(generator, rows=3)
    data = packed.data.to(device)

    def step(data, meta, patches):
        x = torch.ops.relpos.extract_patches_triton(data, meta, patches, plan.seed, "project", plan.patch_size,
                                                    torch.float32, False)
        return x.sum(dim=1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(data, packed.meta, plan.patches), step(data, packed.meta, plan.patches))


def test_fake_kernel_gives_shape_dtype_and_layout(generator):
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed, plan = _batch(generator)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = torch.ops.relpos.extract_patches(packed.data, packed.meta, plan.patches, 0, "drop", 12, torch.bfloat16, True)
    assert out.shape == (plan.num_patches, 3, 12, 12) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("given", ["list", "packed"])
def test_public_extract_patches_compiles_whole(generator, given):
    """relpos.extract_patches itself (checks included) traces with fullgraph=True and matches eager."""
    images = random_images(generator, 3)
    packed = relpos.pack_images(images)
    plan = relpos.sample_plan(packed.sizes, SMALL, generator=generator)
    batch = images if given == "list" else packed

    def step(batch):
        x = relpos.extract_patches(batch, plan, color="drop", channels_last=True)
        return (x * x).mean(dim=(1, 2, 3))

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(batch), step(batch), rtol=0, atol=0)


META_CASES = [(op, table) for op in ("extract_patches", "extract_patches_out", "extract_patches_triton",
                                     "extract_patches_triton_out")
              for table in ("plan", "meta", "out") if op.endswith("_out") or table != "out"]


@pytest.mark.parametrize("op,on_meta", META_CASES)
def test_raw_ops_reject_a_meta_device_table(generator, op, on_meta):
    """A `meta` tensor routes the call to the fake kernel: it must raise, not return uninitialised memory."""
    if "triton" in op and backends.triton_error() is not None:
        pytest.skip("triton unavailable")
    packed, plan = _batch(generator, rows=2)
    tensors = {"meta": packed.meta, "plan": plan.patches,
               "out": torch.empty((2, 3, plan.patch_size, plan.patch_size))}
    tensors[on_meta] = tensors[on_meta].to("meta")
    args = (packed.data, tensors["meta"], tensors["plan"], plan.seed, "drop")
    call = getattr(torch.ops.relpos, op)
    with pytest.raises(ValueError, match=rf"mixed devices \(.*\b{on_meta} meta\b"):  # names the meta tensor
        if op.endswith("_out"):
            call(*args, tensors["out"])
        else:
            call(*args, plan.patch_size, torch.float32, False)


@pytest.mark.parametrize("op", ["extract_patches", "extract_patches_triton"])
def test_opcheck(generator, op):
    """torch.library.opcheck: schema, fake kernel, autograd registration and dispatch are consistent."""
    if "triton" in op and not backends.triton_runs_on(torch.device("cpu")):
        pytest.skip("triton unavailable")
    packed, plan = _batch(generator, rows=2)
    functional = getattr(torch.ops.relpos, op)
    torch.library.opcheck(functional, (packed.data, packed.meta, plan.patches, plan.seed, "drop", plan.patch_size,
                                       torch.float32, True))
    out = torch.full((2, 3, plan.patch_size, plan.patch_size), float("nan"))
    torch.library.opcheck(getattr(torch.ops.relpos, op + "_out"),
                          (packed.data, packed.meta, plan.patches, plan.seed, "drop", out))


@pytest.mark.skipif(not backends.triton_runs_on(torch.device("cpu")), reason="triton unavailable")
def test_raw_triton_op_refuses_a_bad_plan(generator):
    packed, plan = _batch(generator, rows=3)
    bad = plan.patches.clone()
    bad[0, 0] = -1
    out = torch.full((3, 3, plan.patch_size, plan.patch_size), float("nan"))
    with pytest.raises(ValueError, match="plan row 0 is out of range"):
        torch.ops.relpos.extract_patches_triton_out(packed.data, packed.meta, bad, plan.seed, "none", out)
    assert torch.isnan(out).all()  # a CPU plan is checked before the launch: nothing rendered


def _corrupted_plan(generator, plan, num_images):
    """`plan` with random rows pushed just past (or just inside) each bound, column by column."""
    rows = plan.patches.clone()
    n = rows.shape[0]
    for r in range(n):
        column = int(torch.randint(0, 7, (), generator=generator))
        edge = {0: [-1, num_images, num_images - 1], 3: [-1, int(rows[r, 1]) - plan.patch_size,
                                                          int(rows[r, 1]) - plan.patch_size + 1],
                4: [-1, int(rows[r, 2]) - plan.patch_size + 1], 5: [-1, 2, 3], 6: [-1, plan.patch_size,
                                                                                  plan.patch_size + 1],
                1: [plan.patch_size - 1, 32768], 2: [plan.patch_size - 1, 32767]}[column]
        rows[r, column] = edge[int(torch.randint(0, len(edge), (), generator=generator))]
    return rows


@pytest.mark.skipif(not backends.triton_runs_on(torch.device("cpu")), reason="needs Triton's interpreter")
def test_triton_kernel_guards_corrupted_plans_as_the_python_check_does(generator):
    """A device-resident plan reaches the Triton kernel unchecked, so the kernel checks each row itself. Over rows
    pushed just past (or just inside) each bound, it must flag exactly the rows bad_plan_rows flags: those render
    the placeholder (image 0 resized to the patch, at the origin) and raise the flag; the others render as the C++
    op renders them. Launched directly: the op checks a CPU plan before launching."""
    from relpos.kernels import extract_patches as kernel
    from relpos.plan_guard import bad_plan_rows, plan_error_flag, raise_on_plan_errors

    packed, plan = _batch(generator, rows=12)
    placeholder = torch.tensor([0, plan.patch_size, plan.patch_size, 0, 0, 0, 0], dtype=torch.int32)
    flag = plan_error_flag("cpu")
    for _ in range(2):
        corrupted = _corrupted_plan(generator, plan, len(packed))
        corrupted[0], corrupted[-1, 0] = plan.patches[0], -1  # both kinds of row, whatever the draw
        bad = bad_plan_rows(corrupted, len(packed), plan.patch_size)
        safe = torch.where(bad[:, None], placeholder, corrupted)
        shape = (len(corrupted), 3, plan.patch_size, plan.patch_size)
        out, want = torch.full(shape, float("nan")), torch.full(shape, float("nan"))
        flag.zero_()
        kernel.launch(packed.data, packed.meta, corrupted, out, plan.seed, kernel.COLOR_DROP, plan.patch_size, flag)
        torch.ops.relpos.extract_patches_out(packed.data, packed.meta, safe, plan.seed, "drop", want)
        assert torch.equal(out, want)
        with pytest.raises(ValueError, match="rows out of range"):
            raise_on_plan_errors("cpu")
    out = torch.full((len(plan.patches), 3, plan.patch_size, plan.patch_size), float("nan"))
    kernel.launch(packed.data, packed.meta, plan.patches, out, plan.seed, kernel.COLOR_NONE, plan.patch_size, flag)
    raise_on_plan_errors("cpu")  # a clean plan raises nothing
