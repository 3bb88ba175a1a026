"""Fuzzing the public ops' argument checking: never a crash, a hang or a silent wrong answer.

Every generated call must either raise ValueError/TypeError with a message, or return exactly what the
reference returns for the same input. FUZZ_EXAMPLES sets the number of inputs per property (the README's
reliability section reports the default run).
"""

import dataclasses
import os

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import relpos
from relpos.plan import PLAN_COLUMNS

from conftest import SMALL

DEFAULT_EXAMPLES = 150  # what README reports
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
ACCEPTED_ERRORS = (ValueError, TypeError)
DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int64, torch.float32, torch.float16, torch.bool]


def _same(actual, expected):
    """As the backend tests: equal up to the rounding of the per-patch mean and scale (1e-4 in float32)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-5)
    else:
        torch.testing.assert_close(actual.float(), expected.float(), atol=1e-2, rtol=1e-2)


def _outcome(call):
    try:
        result = call()
    except ACCEPTED_ERRORS as error:
        assert str(error), "an error without a message"
        event(f"rejected: {type(error).__name__}")
        return None, error
    event("accepted")
    return result, None


@st.composite
def image_lists(draw):
    count = draw(st.integers(0, 3))
    valid = draw(st.booleans())  # half the batches are well formed, so the accepted path is fuzzed too
    images = []
    for _ in range(count):
        if valid:
            h, w = draw(st.integers(1, 90)), draw(st.integers(1, 90))
            shape = [h, w, 3] if draw(st.booleans()) else [3, h, w]
            images.append(torch.randint(0, 256, shape, dtype=torch.uint8))
            continue
        dtype = draw(st.sampled_from(DTYPES)) if draw(st.booleans()) else torch.uint8
        rank = draw(st.sampled_from([1, 2, 3, 3, 3, 4]))
        shape = [draw(st.integers(0, 70)) for _ in range(rank)]
        if rank == 3 and draw(st.booleans()):
            shape[draw(st.sampled_from([0, 2]))] = draw(st.sampled_from([1, 3, 3, 4]))
        image = torch.randint(0, 255, shape).to(dtype)
        if rank >= 2 and draw(st.booleans()):
            image = image.transpose(0, 1)  # non-contiguous
        images.append(image)
    return images


@FUZZ
@given(images=image_lists(), seed=st.integers(0, 2**31))
def test_random_image_batches(images, seed):
    sizes = []
    for image in images:
        if image.ndim == 3:
            sizes.append(image.shape[:2] if image.shape[-1] == 3 else image.shape[1:])
    plan = relpos.sample_plan(sizes, SMALL, seed=seed) if sizes and all(min(s) > 0 for s in sizes) else \
        relpos.sample_plan([[60, 60]], SMALL, seed=seed)
    out, error = _outcome(lambda: relpos.extract_patches(images, plan, backend="cpu"))
    if error is None:
        _same(out, relpos.extract_patches(images, plan, backend="reference"))


@st.composite
def damaged_plans(draw):
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    sizes = [[draw(st.integers(40, 120)), draw(st.integers(40, 120))] for _ in range(draw(st.integers(1, 3)))]
    images = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator) for h, w in sizes]
    plan = relpos.sample_plan(sizes, SMALL, generator=generator)
    kind = draw(st.sampled_from(["value", "value", "dtype", "columns", "sizes", "patch_size", "none", "none", "none"]))
    patches = plan.patches.clone()
    if kind == "value" and patches.shape[0]:
        row = draw(st.integers(0, patches.shape[0] - 1))
        column = draw(st.integers(0, PLAN_COLUMNS - 1))
        patches[row, column] = draw(st.sampled_from([-1, -(2**31), 2**31 - 1, 0, 1, 2, 3, 96, 5000, 40000]))
        plan = dataclasses.replace(plan, patches=patches)
    elif kind == "dtype":
        plan = dataclasses.replace(plan, patches=patches.to(draw(st.sampled_from([torch.int64, torch.float32, torch.int16]))))
    elif kind == "columns":
        plan = dataclasses.replace(plan, patches=patches[:, : draw(st.integers(0, PLAN_COLUMNS - 1))])
    elif kind == "sizes":
        plan = dataclasses.replace(plan, image_sizes=torch.tensor(sizes[:-1] + [[sizes[-1][0] + 1, sizes[-1][1]]]))
    elif kind == "patch_size":
        plan = dataclasses.replace(plan, patch_size=draw(st.sampled_from([0, -3, 1, 5, SMALL.patch + 1, 10_000])))
    return images, plan


@FUZZ
@given(case=damaged_plans(), color=st.sampled_from(["drop", "project", "none", "drop", "none", "DROP", ""]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int32]))
def test_damaged_plans_and_options(case, color, dtype):
    images, plan = case
    out, error = _outcome(lambda: relpos.extract_patches(images, plan, color=color, dtype=dtype, backend="cpu"))
    if error is None:
        _same(out, relpos.extract_patches(images, plan, color=color, dtype=dtype, backend="reference"))


@FUZZ
@given(data=st.data())
def test_raw_op_with_random_tables(data):
    """The C++ op called directly (no Python checks in front) with random meta and plan values."""
    size = data.draw(st.integers(0, 20_000))
    buffer = torch.randint(0, 256, (size,), dtype=torch.uint8)
    rows = data.draw(st.integers(0, 3))
    wild = data.draw(st.booleans())  # wild tables test the checks; tame ones mostly pass and test the kernel
    def value(low, high, wild_high=2**40):
        return data.draw(st.integers(-5, wild_high)) if wild and data.draw(st.booleans()) else \
            data.draw(st.integers(low, high))

    meta = torch.tensor([[value(0, 2000), value(1, 60), value(1, 60), value(0, 4), value(0, 200), value(0, 3)]
                         for _ in range(rows)], dtype=torch.int64).reshape(rows, 6)
    patch = data.draw(st.integers(-1, 12))
    int32 = 2**31 - 1
    plan = torch.tensor([[value(0, rows, int32), value(patch, 40, int32), value(patch, 40, int32), value(0, 8, int32),
                          value(0, 8, int32), value(0, 2, int32), value(0, max(patch, 0), int32)] for _ in range(data.draw(st.integers(0, 4)))],
                        dtype=torch.int32).reshape(-1, PLAN_COLUMNS)
    out, error = _outcome(lambda: torch.ops.relpos.extract_patches(buffer, meta, plan, 7, "drop", patch,
                                                                   torch.float32, False))
    if error is None:  # accepted: then every value was in range, and the result must match the reference
        packed = relpos.PackedImages(buffer, meta)
        reference = relpos.Plan(patches=plan, pairs=torch.zeros((0, 2), dtype=torch.int64),
                                labels=torch.zeros(0, dtype=torch.int64), seed=7, patch_size=patch,
                                image_sizes=packed.sizes)
        _same(out, relpos.extract_patches(packed, reference, backend="reference"))


def test_fuzz_counts_are_what_the_readme_reports():
    """README's reliability section states the default run: properties x examples = inputs."""
    import re
    from pathlib import Path

    properties = sum(1 for value in globals().values() if callable(value) and hasattr(value, "hypothesis"))
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    claim = re.search(r"\*\*(\d+) inputs fuzzed\*\* with hypothesis \((\d+) properties × (\d+) examples", readme)
    assert claim, "README no longer states the fuzzing counts"
    assert [int(group) for group in claim.groups()] == [properties * DEFAULT_EXAMPLES, properties, DEFAULT_EXAMPLES]
