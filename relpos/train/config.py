"""The pretraining options: one dataclass whose field metadata (help, choices, bounds, whether --resume may
change it) feeds both `relpos train --help` and `TrainConfig.check`, so a choice list lives in one place."""

from __future__ import annotations

import dataclasses
import math

from ..backends import BACKENDS
from ..config import COLOR_MODES, PatchConfig
from ..devices import DEVICE_HELP, check_device_text
from ..models import ARCHS
from ..pretext import DEFAULT_PERMUTATIONS, TASKS, Pretext, build_pretext

AUTO_ON_OFF = ("auto", "on", "off")


def option(default, help: str, *, choices=None, bounds=None, resume_may_change: bool = False, hidden: bool = False):
    """A TrainConfig field: its default and what the CLI and the checks need to know about it."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": tuple(choices) if choices else None, "bounds": bounds,
        "resume_may_change": resume_may_change, "hidden": hidden})


@dataclasses.dataclass
class TrainConfig:
    data: str | None = option(None, "folder of images (searched recursively: JPEG, PNG, WebP, ...) or one file; "
                              "default: the bundled photographs")
    out: str = option("runs/relpos", "output folder: checkpoint, metrics.jsonl, curves.png, skipped.jsonl, "
                      "summary.json", resume_may_change=True)
    task: str = option("relpos", "pretext task: relpos (relative patch position, Doersch et al. 2015) or jigsaw "
                       "(jigsaw puzzles, Noroozi & Favaro 2016)", choices=TASKS)
    permutations: int = option(DEFAULT_PERMUTATIONS, "jigsaw: number of tile permutations (classes), chosen "
                               "greedily for a large minimum Hamming distance", bounds=(2, 1000))
    steps: int = option(2000, "optimisation steps", bounds=(1, 10**9))
    batch: int = option(256, "patches per step (whole images are taken until about this many patches)",
                        bounds=(1, 1_000_000))
    lr: float = option(1e-3, "peak learning rate (AdamW)", bounds=(1e-9, 10.0))
    weight_decay: float = option(1e-4, "AdamW weight decay", bounds=(0.0, 10.0))
    dropout: float = option(0.0, "dropout probability, in training, on the head's input (each patch's fc6 features) "
                            "and on fc7, as CaffeNet's drop6 and drop7 (0: none)", bounds=(0.0, 0.9))
    warmup: int = option(100, "linear warm-up steps", bounds=(0, 10**9))
    schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=("cosine", "constant"))
    arch: str = option("caffenet", "tower: caffenet (the paper's) or resnet18", choices=ARCHS)
    width: float = option(1.0, "channel multiplier of every layer (1.0 = the paper's sizes)", bounds=(0.01, 16.0))
    color: str = option("drop", "colour handling of every patch or tile", choices=COLOR_MODES)
    mirror: bool = option(False, "relpos: mirror each step's images left-right with probability 1/2 (the rendered "
                          "patches are flipped and left/right labels swapped), so few photographs go further")
    backend: str = option("auto", "fused patch op", choices=BACKENDS, resume_may_change=True)
    precision: str = option("auto", "auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32",
                            choices=("auto", "bf16", "fp32"))
    compile: str = option("auto", "torch.compile the step: auto (on for CUDA, off on CPU where compiling costs more "
                          "than it saves), on or off", choices=AUTO_ON_OFF, resume_may_change=True)
    device: str = option("auto", DEVICE_HELP, resume_may_change=True)
    deterministic: str = option("auto", "deterministic algorithms, for bit-exact reruns and resumes: auto (on for "
                                "CPU, off on CUDA where it costs speed), on or off", choices=AUTO_ON_OFF)
    # below 2**32 so that every stream derived from it ((seed * 1_000_003 + step) * 64 + rank) fits a 64-bit seed
    seed: int = option(0, "random seed (model init, batches, plans, noise)", bounds=(0, 2**32 - 1))
    workers: int = option(2, "DataLoader worker processes decoding images", bounds=(0, 256), resume_may_change=True)
    resident: bool = option(False, "decode every image once and keep them on the device (no host work per step)",
                            resume_may_change=True)
    decode: str = option("pil", "pil: decode in DataLoader workers; gpu: workers read bytes, JPEGs are decoded on the "
                         "GPU in batches (torchvision + nvJPEG; other formats fall back to PIL)", choices=("pil", "gpu"),
                         resume_may_change=True)
    holdout: float = option(0.2, "fraction of images held out for pretext accuracy", bounds=(0.0, 0.9))
    eval_every: int = option(100, "evaluate held-out pretext accuracy every N steps", bounds=(1, 10**9),
                             resume_may_change=True)
    eval_plans: int = option(4, "random plans (grids or puzzles) per held-out image per evaluation",
                             bounds=(1, 1000), resume_may_change=True)
    checkpoint_every: int = option(200, "write the checkpoint every N steps (atomically)", bounds=(1, 10**9),
                                   resume_may_change=True)
    log_every: int = option(10, "log metrics every N steps", bounds=(1, 10**9), resume_may_change=True)
    resume: bool = option(False, "continue the run in OUT from OUT/checkpoint.pt (every option that changes what is "
                          "computed must match the checkpoint)", resume_may_change=True)
    overwrite: bool = option(False, "replace an earlier run's files in OUT (without it, a non-empty OUT is refused)",
                             resume_may_change=True)
    max_nonfinite: int = option(5, "stop after this many non-finite losses in a row", bounds=(1, 10**6),
                                resume_may_change=True)
    patch: int = option(96, "patch (or jigsaw tile) side in pixels", bounds=(8, 1024))
    gap: int = option(48, "gap between grid cells in pixels", bounds=(0, 4096))
    jitter: int = option(7, "maximum corner jitter in pixels", bounds=(0, 4096))
    min_pixels: int = option(150_000, "each image is resized to a random pixel count in [min-pixels, max-pixels]",
                             bounds=(1_000, 100_000_000))
    max_pixels: int = option(450_000, "upper end of the resize range", bounds=(1_000, 100_000_000))
    grids_per_image: int = option(4, "grids (relpos) or puzzles (jigsaw) drawn per image per training step: fewer "
                                  "means more images, each at its own scale, in a step of --batch patches; held-out "
                                  "evaluation always draws 4", bounds=(1, 256))
    progress: bool = option(True, "progress bar", resume_may_change=True, hidden=True)
    stop_after: int = option(-1, "stop after this many steps, checkpoint saved, as if interrupted (-1: never)",
                             bounds=(-1, 10**9), resume_may_change=True)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The configuration saved in a checkpoint (keys this version does not know are ignored; keys it lacks,
        from an older version, take their defaults)."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def patch_config(self) -> PatchConfig:
        return PatchConfig.scaled(patch=self.patch, gap=self.gap, jitter=self.jitter, min_pixels=self.min_pixels,
                                  max_pixels=self.max_pixels)

    def check(self) -> None:
        for field in dataclasses.fields(self):
            value, flag = getattr(self, field.name), "--" + field.name.replace("_", "-")
            choices, bounds = field.metadata["choices"], field.metadata["bounds"]
            if choices and value not in choices:
                raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
            if bounds and not (isinstance(value, (int, float)) and math.isfinite(value)
                               and bounds[0] <= value <= bounds[1]):
                raise ValueError(f"{flag} must lie in [{bounds[0]}, {bounds[1]}], got {value}")
        check_device_text(self.device)
        self.patch_config()
        if self.mirror and self.task != "relpos":
            raise ValueError(f"--mirror is only defined for --task relpos, got --task {self.task}")

    def changes_on_resume(self, saved: dict) -> list[str]:
        """The options that alter what the run computes and differ from the checkpoint's `saved` arguments."""
        defaults = TrainConfig()
        return [f"--{f.name.replace('_', '-')} (checkpoint: {saved.get(f.name, getattr(defaults, f.name))!r}, now: "
                f"{getattr(self, f.name)!r})" for f in dataclasses.fields(self)
                if not f.metadata["resume_may_change"] and saved.get(f.name, getattr(defaults, f.name))
                != getattr(self, f.name)]


def pretext_from_checkpoint(state: dict) -> Pretext:
    """The task of a training checkpoint; checkpoints from before the pretext tasks are relative position."""
    config = TrainConfig.from_dict(state["args"])
    saved = state.get("pretext") or {"task": "relpos"}
    return build_pretext(saved["task"], config.patch_config(), saved.get("permutations", config.permutations))
