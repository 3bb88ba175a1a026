"""Pretraining: resume equality, bad files, compiled vs eager, DDP with gloo, export, the CLI."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from relpos.checkpoint import load_checkpoint
from relpos.training import compute_loss, train, weights_digest
from relpos.models import ClassifierHead, _blockwise_linear, build_model, head_input

from training_helpers import small_photo_folder, tiny_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_photo_folder(tmp_path_factory.mktemp("photos"))


def _weights(out):
    return load_checkpoint(out / "checkpoint.pt")["model"]


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_resume_gives_the_same_weights(photos, tmp_path, dropout):
    straight = tiny_config(photos, tmp_path / "straight", dropout=dropout)
    train(straight)
    halves = tiny_config(photos, tmp_path / "halves", stop_after=3, dropout=dropout)
    assert train(halves)["interrupted"]
    assert load_checkpoint(tmp_path / "halves" / "checkpoint.pt")["step"] == 3
    train(dataclasses.replace(halves, stop_after=-1, resume=True))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "halves")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "halves" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps)) == list(range(1, 7))  # no step logged twice after the resume


def test_dropout_drops_in_training_only_and_keeps_the_checkpoint_keys():
    torch.manual_seed(0)
    plain, dropped = build_model("caffenet", 0.125), build_model("caffenet", 0.125)
    dropped.head.dropout = 0.5
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # older checkpoints load into either
    dropped.load_state_dict(plain.state_dict())
    features = torch.randn(16, plain.head.layers[0].in_features // 2)  # the fc6 features of 16 patches
    index = torch.randint(0, 16, (64, 2))  # 64 pairs of them: what PretextNet runs, fc7 per patch
    plain.eval(), dropped.eval()
    assert torch.equal(plain.head.classify(features, index), dropped.head.classify(features, index))
    plain.train(), dropped.train()
    torch.manual_seed(1)
    with torch.no_grad():
        kept = torch.nn.functional.dropout(features, 0.5, training=True)  # drop6, once per patch
        fc7 = dropped.head.layers[:3](head_input(kept, index))
        expected = dropped.head.layers[3:](torch.nn.functional.dropout(fc7, 0.5, training=True))
    torch.manual_seed(1)
    with torch.no_grad():
        got = dropped.head.classify(features, index)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, plain.head.classify(features, index))
    with pytest.raises(ValueError, match="dropout"):
        ClassifierHead(16, 2, 8, dropout=1.0)


@pytest.mark.parametrize("inputs,patches,items", [(2, 40, 200), (2, 200, 40), (3, 30, 90), (9, 18, 2), (9, 10, 40)])
@pytest.mark.parametrize("bias", [False, True])
def test_classify_per_patch_matches_the_concatenated_head(inputs, patches, items, bias):
    """fc7 computed per patch (items outnumber patches) or on concatenated features (otherwise) is the head applied
    to head_input: logits and every gradient to float32 rounding, on fresh random features, weights and index."""
    torch.manual_seed(inputs * 1000 + patches + items)
    head = ClassifierHead(24, inputs, 8, width=1 / 128)
    if bias:  # the head's fc7 has none, BatchNorm following it (whose mean would cancel a bias' gradient); a subclass's could
        head.layers[0].bias = torch.nn.Parameter(torch.randn(head.layers[0].out_features))
        head.layers[1] = torch.nn.Identity()
    features = torch.randn(patches, 24, requires_grad=True)
    index = torch.randint(0, patches, (items, inputs))
    weights = torch.randn(items, 8)
    grads = []
    for way in ("classify", "forward"):
        head.zero_grad()
        features.grad = None
        logits = head.classify(features, index) if way == "classify" else head(head_input(features, index))
        (logits * weights).sum().backward()
        grads.append([logits.detach(), features.grad] + [p.grad for p in head.parameters()])
    for got, expected in zip(*grads):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert float(grads[0][1].abs().max()) > 0  # the features' gradient flows through both ways


def test_classify_draws_drop6_once_per_patch():
    """In training with dropout, a patch's fc6 features are dropped alike in every item that uses it (drop6 per
    patch, as each tower of the paper's siamese pair drops its own), whichever way fc7 is computed."""
    head = ClassifierHead(32, 2, 8, width=1 / 128, dropout=0.5).train()
    features = torch.randn(10, 32)
    many = torch.tensor([[0, 1]] * 40 + [[1, 0]] * 40)  # 80 items on 10 patches: fc7 per patch
    few = many[:4]  # 4 items on 10 patches: fc7 on the concatenated features
    for index in (many, few):
        torch.manual_seed(5)
        got = head.classify(features, index)
        torch.manual_seed(5)
        kept = torch.nn.functional.dropout(features, 0.5, training=True)
        assert 0 < int((kept == 0).sum()) < kept.numel()
        fc7 = torch.nn.functional.dropout(head.layers[:3](head_input(kept, index)), 0.5, training=True)
        torch.testing.assert_close(got, head.layers[3:](fc7), rtol=1e-5, atol=1e-6)


def test_training_with_dropout_trains_other_weights(photos, tmp_path):
    train(tiny_config(photos, tmp_path / "plain", steps=2))
    train(tiny_config(photos, tmp_path / "dropout", steps=2, dropout=0.5))
    plain, dropped = _weights(tmp_path / "plain"), _weights(tmp_path / "dropout")
    assert any(not torch.equal(plain[name], dropped[name]) for name in plain)


def test_resume_refuses_other_settings(photos, tmp_path):
    config = tiny_config(photos, tmp_path / "run", steps=3)
    train(config)
    with pytest.raises(ValueError, match="width"):
        train(dataclasses.replace(config, width=0.25, resume=True))


def test_bad_files_are_skipped_and_reported(photos, tmp_path):
    data = small_photo_folder(tmp_path / "data", count=5)
    (data / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (data / "empty.png").write_bytes(b"")
    (data / "notes.png").write_text("not an image")
    good = (data / "photo1.png").read_bytes()
    (data / "truncated.png").write_bytes(good[: len(good) // 3])
    from PIL import Image

    Image.new("RGB", (400, 12), (200, 10, 10)).save(data / "tiny.png")  # too thin for a pair at any scale
    out = tmp_path / "out"
    config = tiny_config(data, out, steps=8, holdout=0.0, batch=200)
    summary = train(config)
    written = json.loads((out / "summary.json").read_text())
    assert written["config"] == json.loads(json.dumps(dataclasses.asdict(config)))  # the options that made it
    assert written["config"]["batch"] == 200 and written["config"]["seed"] == 3
    reasons = {os.path.basename(json.loads(line)["path"]): json.loads(line)["reason"]
               for line in (out / "skipped.jsonl").read_text().splitlines()}
    assert {"corrupt.jpg", "empty.png", "notes.png", "truncated.png", "tiny.png"} <= set(reasons)
    assert reasons["tiny.png"].split(": ", 1)[1].startswith("12x400 resizes to ")  # the size and the rule it fails
    assert "not larger than the pair footprint" in reasons["tiny.png"]
    assert summary["skipped_files"] == len(reasons)
    assert not any(name.startswith("photo") for name in reasons)


def test_an_image_too_small_at_some_scales_only_is_used_not_skipped(tmp_path, caplog):
    """A wide photograph that holds a pair above ~38k pixels but not at 30k is skipped only in the steps that draw
    it small: it is not a bad file (not in skipped.jsonl) and counts among the training images."""
    from PIL import Image

    from relpos.pretext import build_pretext

    data = small_photo_folder(tmp_path / "data", count=4)
    wide = Image.open(next(data.rglob("photo0.*"))).convert("RGB").resize((300, 120))
    wide.save(data / "wide.png")
    config = tiny_config(data, tmp_path / "out", steps=8, holdout=0.0, batch=200)
    pretext = build_pretext("relpos", config.patch_config())
    assert pretext.fits_at_some_scale(120, 300) and not pretext.fits_at_some_scale(12, 400)
    with caplog.at_level("INFO", logger="relpos.train"):
        summary = train(config)
    assert any("wide.png" in r.getMessage() and "at this step's scale" in r.getMessage() for r in caplog.records)
    skipped = tmp_path / "out" / "skipped.jsonl"
    assert not skipped.exists() or "wide.png" not in skipped.read_text()
    assert summary["skipped_files"] == 0 and summary["train_images"] == 5


def test_compiled_and_eager_give_the_same_loss(photos):
    import relpos

    # inductor on the GPU (model and data there); on the CPU the same Dynamo + AOTAutograd graph runs eagerly
    # (inductor's C++ compile of this network takes minutes on a 2-core CI machine)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    torch.manual_seed(0)
    model = build_model("caffenet", 0.125).to(device, memory_format=torch.channels_last)
    config = relpos.PatchConfig(patch=96)
    images = [torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8)]
    plan = relpos.sample_plan([[300, 400]], config, seed=1)
    patches = relpos.extract_patches(images, plan, channels_last=True).to(device)
    pairs, labels = plan.pairs.to(device), plan.labels.to(device)
    eager_loss, _, _ = compute_loss(model, patches, pairs, labels, None)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(compute_loss, dynamic=True, backend=backend)
    loss, _, _ = compiled(model, patches, pairs, labels, None)
    # aot_eager runs the same float32 kernels (only the order of a few sums may move); inductor fuses and reorders
    loose = backend == "inductor"
    torch.testing.assert_close(loss, eager_loss, rtol=1e-2 if loose else 1e-5, atol=1e-2 if loose else 1e-6)
    loss.backward()
    for eager_grad, p in zip(eager_grads, model.parameters()):  # tolerance relative to each tensor's own size
        scale = float(eager_grad.abs().max())
        torch.testing.assert_close(p.grad, eager_grad, rtol=2e-2 if loose else 1e-4,
                                   atol=(2e-2 if loose else 1e-5) * scale)


# jigsaw with 40-px tiles in a 3x3 grid that fits the small photos (as in test_faults.JIGSAW)
_JIGSAW = ["--task", "jigsaw", "--permutations", "12", "--patch", "40", "--gap", "4", "--jitter", "2", "--batch", "72",
           "--min-pixels", "45000", "--max-pixels", "60000"]


@pytest.mark.parametrize("task_options", [[], _JIGSAW], ids=["relpos", "jigsaw"])
def test_ddp_two_processes_with_gloo_agree(photos, tmp_path, task_options):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29500 + os.getpid() % 1000), "-m", "relpos.cli", "train", "--data", str(photos), "--out", str(out),
               "--steps", "4", "--batch", "48", "--width", "0.125", "--workers", "0", "--patch", "48", "--gap", "24",
               "--jitter", "3", "--min-pixels", "30000", "--max-pixels", "50000", "--eval-every", "4",
               "--eval-plans", "1", "--no-progress", "--device", "cpu", *task_options]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_agree"] is True
    assert summary["task"] == (task_options[1] if task_options else "relpos")


def test_cpu_ranks_use_gloo_even_where_a_gpu_exists():
    # NCCL cannot all-reduce CPU tensors: `--device cpu` under torchrun failed on an H100 when the backend
    # followed torch.cuda.is_available() instead of the device the ranks train on.
    from relpos.train.distributed import process_group_backend

    assert process_group_backend(torch.device("cpu")) == "gloo"
    assert process_group_backend(torch.device("cuda", 1)) == "nccl"


def test_export_tower(photos, tmp_path):
    from relpos.export import export_tower, load_tower

    out = tmp_path / "run"
    train(tiny_config(photos, out, steps=2))
    path = export_tower(out / "checkpoint.pt", tmp_path / "tower.safetensors")
    tower = load_tower(path)
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    for name, tensor in tower.state_dict().items():
        assert torch.equal(tensor, state[f"tower.{name}"])
    assert tower(torch.randn(2, 3, 48, 48)).shape[0] == 2
    with pytest.raises(ValueError, match="already exists"):  # an earlier export is never replaced silently
        export_tower(out / "checkpoint.pt", path)
    assert export_tower(out / "checkpoint.pt", path, overwrite=True) == path
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # written atomically, no temp file left


def test_weights_digest_sees_one_bit():
    model = build_model("caffenet", 0.125)
    before = weights_digest(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(model) != before


def test_resident_images_train_like_the_loader(photos, tmp_path):
    """--resident keeps the decoded images packed on the device; same batches, same plans, same weights."""
    loader = tiny_config(photos, tmp_path / "loader", steps=3)
    resident = dataclasses.replace(loader, out=str(tmp_path / "resident"), resident=True)
    train(loader)
    train(resident)
    a, b = _weights(tmp_path / "loader"), _weights(tmp_path / "resident")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_grids_per_image_changes_the_training_draws_not_the_evaluation(photos, tmp_path):
    """--grids-per-image 1 trains on one grid per image (more images per step); held-out pairs stay the 4-grid set."""
    runs = {}
    for grids in (4, 1):
        config = tiny_config(photos, tmp_path / f"grids{grids}", steps=3, eval_every=3, grids_per_image=grids)
        train(config)
        lines = [json.loads(line) for line in (tmp_path / f"grids{grids}" / "metrics.jsonl").read_text().splitlines()]
        runs[grids] = [line for line in lines if line["kind"] == "eval"][-1]
    assert runs[1]["items"] == runs[4]["items"] > 0
    four, one = (_weights(tmp_path / f"grids{g}") for g in (4, 1))
    assert any(not torch.equal(four[name], one[name]) for name in four)  # the training batches differed

    from relpos.pretext import build_pretext

    pretext = build_pretext("relpos", tiny_config(photos, tmp_path).patch_config())
    sizes = [[400, 500]] * 3
    assert pretext.draw(sizes, seed=0).grid_ids.unique().numel() == 12
    assert pretext.with_config(grids_per_image=1).draw(sizes, seed=0).grid_ids.unique().numel() == 3
    assert pretext.config.grids_per_image == 4  # with_config leaves the original alone


@torch.no_grad()
def test_classify_per_patch_under_bf16_autocast_keeps_the_concatenated_dtype_and_rounding():
    """Under autocast the per-patch sum is taken in float32 and rounded once: the concatenated product's output dtype
    (a float32 bias would otherwise promote it) and an error within bf16's rounding of each block's product (k + 1
    roundings of 2^-9 relative, the concatenated product's one) against float64."""
    torch.manual_seed(3)
    linear = torch.nn.Linear(2 * 64, 256)
    features, index = torch.randn(40, 64), torch.randint(0, 40, (300, 2))
    exact = torch.nn.functional.linear(head_input(features.double(), index), linear.weight.double(),
                                       linear.bias.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        per_patch = _blockwise_linear(linear, features, index)
        concatenated = linear(head_input(features, index))
    assert per_patch.dtype == concatenated.dtype == torch.bfloat16
    scale = float(exact.abs().max())
    errors = [float((x.double() - exact).abs().max()) / scale for x in (per_patch, concatenated)]
    assert errors[1] <= 2 ** -8 and errors[0] <= 2 * 2 ** -8, errors


def test_the_fc7_ab_benchmark_times_both_ways_and_saves_them(tmp_path):
    """benchmarks/fc7_per_patch_ab.py on a tiny step: both medians, the same logits to rounding, saved with the
    environment and never over an earlier result."""
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fc7_per_patch_ab.py"
    spec = importlib.util.spec_from_file_location("fc7_per_patch_ab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for _ in range(2):
        assert module.main(["--reps", "1", "--width", "0.0625", "--patches", "16", "--pairs", "60",
                            "--out", str(tmp_path)]) == 0
    saved = sorted(tmp_path.glob("fc7-per-patch-cpu-*.json"))
    assert len(saved) == 2  # the second run did not overwrite the first
    result = json.loads(saved[0].read_text())
    assert set(result["median_seconds"]) == {"concatenated", "per_patch"} and result["environment"]["torch"]
    assert result["max_abs_logit_difference"] <= 1e-5 * max(result["max_abs_logit"], 1.0)
