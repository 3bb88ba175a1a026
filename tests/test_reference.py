"""The reference (the spec) against hand-computed cases: taps, resize, RMS 50, kept channel, projection, noise."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import relpos
from relpos.plan import CHANNEL, DOWN, HEIGHT, LEFT, TOP, WIDTH
from relpos.reference import linear_taps, patch_noise, philox4x32_10, resize_bilinear

from conftest import SMALL, random_images


def test_taps_hand_computed():
    # 4 -> 2: output pixels sit at source positions 0.5 and 2.5.
    i0, i1, w0, w1 = linear_taps(4, 2)
    assert i0.tolist() == [0, 2] and i1.tolist() == [1, 3] and w1.tolist() == [0.5, 0.5] and w0.tolist() == [0.5, 0.5]
    # 2 -> 4: positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last pixel: both taps on it).
    i0, i1, w0, w1 = linear_taps(2, 4)
    assert i0.tolist() == [0, 0, 0, 1] and i1.tolist() == [1, 1, 1, 1]
    assert w1.tolist() == [0.0, 0.25, 0.75, 0.0]


@pytest.mark.parametrize("size", [(51, 68), (151, 168), (7, 300), (60, 80)])
def test_resize_is_torch_bilinear(size, generator):
    image = torch.randint(0, 256, (3, 60, 80), generator=generator).float()
    ours = resize_bilinear(image, size)
    theirs = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    # F.interpolate rounds its sampling positions in float32; ours are exact: they differ by those roundings.
    torch.testing.assert_close(ours, theirs, atol=3e-3, rtol=0)


def test_philox_known_answer():
    # Random123's known-answer test for philox4x32_10, counter 0 and key 0.
    words = [int(w[0]) for w in philox4x32_10(0, np.array([0], dtype=np.uint64), 0)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_noise_is_uniform_in_half_interval():
    noise = patch_noise(seed=123, patch_index=4, patch_size=64)
    assert noise.dtype == torch.float32 and noise.shape == (3, 64, 64)
    assert float(noise.min()) >= -0.5 and float(noise.max()) < 0.5
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.var()) - 1 / 12) < 0.005
    assert not torch.equal(noise, patch_noise(seed=123, patch_index=5, patch_size=64))
    assert torch.equal(noise, patch_noise(seed=123, patch_index=4, patch_size=64))


def _crop(image_chw, row, size):
    resized = resize_bilinear(image_chw.float(), (row[HEIGHT], row[WIDTH]))
    return resized[:, row[TOP] : row[TOP] + size, row[LEFT] : row[LEFT] + size]


@pytest.mark.parametrize("color", relpos.COLOR_MODES)
def test_every_patch_has_rms_50(color, generator):
    images = random_images(generator, 3)
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, SMALL, generator=generator)
    out = relpos.extract_patches(images, plan, color=color, backend="reference")
    rms = out.double().pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 50.0), atol=1e-3, rtol=0)


def test_colour_drop_keeps_one_centred_channel_and_noise(generator):
    images = random_images(generator, 2, layout="chw")
    config = relpos.PatchConfig(**{**SMALL.__dict__, "downsample_prob": 0.0})
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, config, generator=generator)
    out = relpos.extract_patches(images, plan, color="drop", backend="reference")
    for n, row in enumerate(plan.patches.tolist()):
        kept = row[CHANNEL]
        crop = _crop(images[row[0]], row, config.patch)[kept]
        centred = crop - crop.double().mean().float()
        scale = out[n, kept].norm() / centred.norm()
        torch.testing.assert_close(out[n, kept], centred * scale, atol=1e-3, rtol=1e-4)
        assert abs(float(out[n, kept].double().mean())) < 1e-3
        noise = patch_noise(plan.seed, n, config.patch)  # the spec's noise: Philox keyed by (seed, patch, element)
        assert float(noise.abs().max()) <= 0.5
        for other in {0, 1, 2} - {kept}:
            torch.testing.assert_close(out[n, other], noise[other] * scale, atol=1e-4, rtol=1e-5)


def test_projection_removes_green_magenta(generator):
    images = random_images(generator, 2)
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, SMALL, generator=generator)
    out = relpos.extract_patches(images, plan, color="project", backend="reference")
    r, g, b = out.unbind(1)
    assert float((2 * g - r - b).abs().max()) < 1e-3
    assert float(out.abs().max()) > 1  # not trivially zero


def test_downsampling_blurs(generator):
    images = random_images(generator, 2)
    plan = relpos.sample_plan(relpos.pack_images(images).sizes, SMALL, generator=generator)
    plan.patches[:, DOWN] = 0
    sharp = relpos.extract_patches(images, plan, color="none", backend="reference")
    plan.patches[:, DOWN] = 3
    blurred = relpos.extract_patches(images, plan, color="none", backend="reference")
    roughness = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert roughness(blurred) < 0.7 * roughness(sharp)


def test_hand_computed_patch():
    # A 2-pixel-wide vertical ramp, no resize (resized size = image size), colour "none":
    # each channel is centred, then the patch scaled to RMS 50.
    image = torch.zeros((2, 2, 3), dtype=torch.uint8)
    image[:, 1] = 100
    plan = relpos.Plan(
        patches=torch.tensor([[0, 2, 2, 0, 0, 0, 0]], dtype=torch.int32),
        pairs=torch.zeros((0, 2), dtype=torch.int64),
        labels=torch.zeros(0, dtype=torch.int64),
        seed=0,
        patch_size=2,
        image_sizes=torch.tensor([[2, 2]]),
    )
    out = relpos.extract_patches([image], plan, color="none", backend="reference")
    expected = torch.tensor([[-50.0, 50.0], [-50.0, 50.0]]).expand(3, 2, 2)
    torch.testing.assert_close(out[0], expected, atol=1e-3, rtol=0)
