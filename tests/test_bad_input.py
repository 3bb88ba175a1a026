"""Bad input gets a ValueError/TypeError that names the argument and what was expected."""

import dataclasses

import pytest
import torch

import relpos
from relpos import backends

from conftest import SMALL, random_images


@pytest.fixture
def batch(generator):
    images = random_images(generator, 2)
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, SMALL, generator=generator)
    return images, plan


def test_wrong_dtype(batch):
    images, plan = batch
    with pytest.raises(TypeError, match=r"images\[1\] must be uint8.*float32"):
        relpos.extract_patches([images[0], images[1].float()], plan)


@pytest.mark.parametrize("shape", [(50, 60), (2, 50, 60, 3, 1)])
def test_wrong_rank(batch, shape):
    images, plan = batch
    with pytest.raises(ValueError, match=r"images\[0\] must have 3 dimensions"):
        relpos.extract_patches([torch.zeros(shape, dtype=torch.uint8)], plan)


@pytest.mark.parametrize("shape,kind", [((50, 60, 1), "grayscale"), ((50, 60, 4), "RGBA"), ((4, 50, 60), "RGBA")])
def test_grayscale_and_rgba_point_to_to_rgb(batch, shape, kind):
    images, plan = batch
    with pytest.raises(ValueError, match="to_rgb"):
        relpos.extract_patches([torch.zeros(shape, dtype=torch.uint8)], plan)


def test_to_rgb_converts():
    gray = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    rgb = relpos.to_rgb(gray)
    assert rgb.shape == (3, 4, 3) and torch.equal(rgb[..., 2], gray)
    rgba = torch.randint(0, 255, (5, 6, 4), dtype=torch.uint8)
    assert torch.equal(relpos.to_rgb(rgba), rgba[..., :3])
    chw = torch.randint(0, 255, (1, 5, 6), dtype=torch.uint8)
    assert relpos.to_rgb(chw, layout="chw").shape == (3, 5, 6)
    with pytest.raises(TypeError, match="uint8"):
        relpos.to_rgb(gray.float())


def test_non_contiguous(batch):
    images, plan = batch
    transposed = torch.zeros((3, 60, 50), dtype=torch.uint8).transpose(1, 2)
    with pytest.raises(ValueError, match=r"images\[0\] is not contiguous"):
        relpos.extract_patches([transposed], plan)


def test_wrong_device(batch):
    images, plan = batch
    with pytest.raises(ValueError, match="CPU or a CUDA device"):
        relpos.extract_patches([image.to("meta") for image in images], plan)


def test_empty_batch(batch):
    _, plan = batch
    with pytest.raises(ValueError, match="images is empty"):
        relpos.extract_patches([], plan)
    with pytest.raises(ValueError, match="empty"):
        relpos.sample_plan([])


def test_not_a_batch(batch):
    _, plan = batch
    with pytest.raises(TypeError, match="images must be"):
        relpos.extract_patches("photo.jpg", plan)
    with pytest.raises(TypeError, match=r"images\[0\] must be a torch.Tensor"):
        relpos.extract_patches([[1, 2, 3]], plan)


def test_plan_from_another_batch(batch, generator):
    images, plan = batch
    other = random_images(generator, 3)
    with pytest.raises(ValueError, match="plan was drawn for images of sizes"):
        relpos.extract_patches(other, plan)
    with pytest.raises(TypeError, match="plan must be a relpos.Plan"):
        relpos.extract_patches(images, plan.patches)


def test_out_of_range_plan_rows(batch):
    images, plan = batch
    broken = dataclasses.replace(plan, patches=plan.patches.clone())
    broken.patches[0, relpos.plan.TOP] = 10_000
    usable = ["reference", *backends.fast_backends(torch.device("cpu"))] + (["triton"] if backends.triton_runs_on(
        torch.device("cpu")) else [])
    for backend in usable:  # the public op checks a CPU plan's rows before any backend runs
        with pytest.raises(ValueError, match=r"plan(\.patches)? row 0 is out of range"):
            relpos.extract_patches(images, broken, backend=backend)
    packed = relpos.pack_images(images)
    # the raw ops, which other projects may call without the Python face, each name the row in their own words
    with pytest.raises(ValueError, match=r"plan row 0 puts the patch at \(10000"):
        torch.ops.relpos.extract_patches(packed.data, packed.meta, broken.patches, 0, "drop", 12, torch.float32, False)
    if backends.triton_runs_on(torch.device("cpu")):
        with pytest.raises(ValueError, match=r"row 0"):
            torch.ops.relpos.extract_patches_triton(packed.data, packed.meta, broken.patches, 0, "drop", 12,
                                                    torch.float32, False)
    broken.patches[0, relpos.plan.TOP] = 0
    broken.patches[0, relpos.plan.IMAGE] = 7
    # the raw op checks values too (for callers that skip the Python face)
    with pytest.raises(ValueError, match="names image 7 but the batch has 2 images"):
        torch.ops.relpos.extract_patches(packed.data, packed.meta, broken.patches, 0, "drop", 12, torch.float32, False)


def test_raw_op_argument_checks(batch):
    images, plan = batch
    packed = relpos.pack_images(images)
    op = torch.ops.relpos.extract_patches
    with pytest.raises(TypeError, match="data must be uint8"):
        op(packed.data.float(), packed.meta, plan.patches, 0, "drop", 12, torch.float32, False)
    with pytest.raises(TypeError, match="plan must be int32"):
        op(packed.data, packed.meta, plan.patches.long(), 0, "drop", 12, torch.float32, False)
    with pytest.raises(ValueError, match="color must be"):
        op(packed.data, packed.meta, plan.patches, 0, "sepia", 12, torch.float32, False)
    with pytest.raises(TypeError, match="dtype must be float32, bfloat16 or float16"):
        op(packed.data, packed.meta, plan.patches, 0, "drop", 12, torch.int32, False)
    with pytest.raises(ValueError, match="larger than data|past the end of data"):
        op(packed.data[:100], packed.meta, plan.patches, 0, "drop", 12, torch.float32, False)
    with pytest.raises(ValueError, match="past the end of data"):
        op(packed.data[: packed.data.numel() - 1], packed.meta, plan.patches, 0, "drop", 12, torch.float32, False)


def test_bad_options(batch):
    images, plan = batch
    with pytest.raises(ValueError, match="color must be one of"):
        relpos.extract_patches(images, plan, color="grey")
    with pytest.raises(TypeError, match="dtype must be one of"):
        relpos.extract_patches(images, plan, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend must be one of"):
        relpos.extract_patches(images, plan, backend="opencl")
    with pytest.raises(ValueError, match="backend='cuda' needs images on a CUDA device"):
        relpos.extract_patches(images, plan, backend="cuda")
    with pytest.raises(ValueError, match="out must have shape"):
        relpos.extract_patches(images, plan, out=torch.empty(1, 3, 12, 12))


def test_packed_images_checks():
    data = torch.zeros(100, dtype=torch.uint8)
    with pytest.raises(ValueError, match="reaches past the end of data"):
        relpos.PackedImages(data, torch.tensor([[0, 10, 10, 100, 10, 1]]))
    with pytest.raises(TypeError, match="PackedImages.data must be uint8"):
        relpos.PackedImages(data.float(), torch.tensor([[0, 2, 2, 4, 2, 1]]))
    with pytest.raises(ValueError, match="must be int64"):
        relpos.PackedImages(data, torch.tensor([[0, 2, 2]]))


def test_images_too_small_for_a_pair():
    with pytest.raises(ValueError, match=r"image 0 \(4x500\).*not larger than the pair footprint"):
        relpos.sample_plan([[4, 500]], SMALL, seed=0, on_small="raise")
    assert relpos.sample_plan([[4, 500]], SMALL, seed=0).skipped == [0]


@pytest.mark.parametrize("backend,missing", [("cpu", "has_cpu_extension"), ("cuda", "has_cuda_extension"),
                                             ("triton", "triton_runs_on")])
def test_an_unavailable_backend_is_a_runtime_error_whichever_it_is(monkeypatch, backend, missing):
    monkeypatch.setattr(backends, missing, lambda *args: False)
    device = torch.device("cuda" if backend == "cuda" else "cpu")
    with pytest.raises(RuntimeError, match=f"backend='{backend}'"):
        backends.resolve(backend, device)


def _raw_op_error(generator, damage):
    images = [torch.randint(0, 256, (200, 300, 3), dtype=torch.uint8, generator=generator)]
    packed = relpos.pack_images(images)
    plan = relpos.sample_plan(packed.sizes, SMALL, generator=generator)
    data, meta, rows = packed.data, packed.meta, plan.patches
    if damage == "plan-dtype":
        rows = rows.float()
    elif damage == "plan-row":
        rows = rows.clone()
        rows[-1, 0] = 99
    elif damage == "meta-row":
        meta = meta.clone()
        meta[0, 0] = 10**12
    else:
        rows = rows.to("meta")
    with pytest.raises((ValueError, TypeError)) as error:
        torch.ops.relpos.extract_patches(data, meta, rows, plan.seed, "drop", plan.patch_size, torch.float32, False)
    return str(error.value)


@pytest.mark.parametrize("damage", ["plan-dtype", "plan-row", "meta-row", "mixed-devices"])
def test_raw_op_errors_name_the_problem_without_printing_tensors(generator, damage):
    message = _raw_op_error(generator, damage)
    assert "tensor(" not in message and len(message) < 400, message
    assert any(word in message for word in ("plan", "meta", "devices")), message
