"""GPU JPEG decoding: the parts that run anywhere (raw reads, orientation), and the device path on a GPU."""

import io

import pytest
import torch
from PIL import Image, ImageOps

from relpos.data.gpu_decode import RawFiles, _orient, gpu_decode_error
from relpos.training import train

from training_helpers import small_photo_folder, tiny_config


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil(orientation, generator):
    array = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8, generator=generator)
    image = Image.fromarray(array.numpy())
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as reopened:
        expected = torch.from_numpy(__import__("numpy").asarray(ImageOps.exif_transpose(reopened)).copy())
    ours = _orient(array.permute(2, 0, 1), orientation).permute(1, 2, 0)
    assert torch.equal(ours, expected)


def test_raw_files_read_bytes_and_report_failures(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8abc")
    (tmp_path / "empty.jpg").write_bytes(b"")
    files = RawFiles([tmp_path / "a.jpg", tmp_path / "empty.jpg", tmp_path / "missing.jpg"])
    assert files[0][1].tolist()[:2] == [0xFF, 0xD8]
    assert "empty file" in files[1][1] and "cannot read" in files[2][1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_gpu_decode_without_gpu_is_a_clear_error(tmp_path):
    photos = small_photo_folder(tmp_path / "photos", count=3)
    assert "CUDA device" in gpu_decode_error(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="--decode gpu"):
        train(tiny_config(photos, tmp_path / "run", steps=1, decode="gpu"))


@pytest.mark.skipif(not torch.cuda.is_available() or gpu_decode_error(torch.device("cuda")) is not None,
                    reason="needs a GPU and torchvision")
def test_gpu_decode_matches_host_decoding_closely(tmp_path):
    from relpos.data import load_rgb
    from relpos.data.gpu_decode import decode_on_device

    photos = small_photo_folder(tmp_path / "photos", count=4)
    (photos / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    paths = sorted(photos.rglob("*.*"))
    batch = decode_on_device([RawFiles(paths)[i] for i in range(len(paths))], torch.device("cuda"))
    assert [p for p, _ in batch.failures] == [str(photos / "bad.jpg")]
    for index, path in enumerate(batch.paths):
        host = load_rgb(path).permute(2, 0, 1).float()
        device = batch.images.image(index).float().cpu()
        assert device.shape == host.shape
        assert (device - host).abs().mean() < 3  # nvJPEG and libjpeg differ by IDCT rounding only


def test_jpegs_over_the_size_limits_are_refused_from_the_header_before_the_device(tmp_path):
    """--decode gpu applies host decoding's limits (was: a 40000x300 JPEG went to nvJPEG and then raised from
    pack_images, outside any handler, killing the run)."""
    from relpos.data.gpu_decode import screen

    Image.new("RGB", (40000, 300)).save(tmp_path / "wide.jpg", quality=10)
    Image.new("RGB", (64, 48)).save(tmp_path / "fine.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    Image.new("RGB", (20, 20)).save(tmp_path / "plain.png")
    paths = [tmp_path / name for name in ("wide.jpg", "fine.jpg", "rotated.jpg", "broken.jpg", "plain.png")]
    raw, jpegs, failures = screen([RawFiles(paths)[i] for i in range(len(paths))])
    assert [(path.rsplit("/", 1)[1], "too large" in why) for path, why in failures] == [("wide.jpg", True)]
    assert [(path.rsplit("/", 1)[1], orientation) for path, _, orientation in jpegs] == [("fine.jpg", 1),
                                                                                          ("rotated.jpg", 6)]
    assert [path.rsplit("/", 1)[1] for path, _ in raw] == ["fine.jpg", "rotated.jpg", "broken.jpg", "plain.png"]
