"""The siamese network: a tower applied once per patch, item features gathered by index, a classifier head.

`caffenet` is the authors' tower (CaffeNet conv1..conv5 with BN on conv3..5 and fc6); `resnet18` is a modern
option adapted to 96-px patches. `width` scales every layer (1.0 = the paper's sizes), so small versions
train in minutes on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("caffenet", "resnet18")


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width)))


class CaffeNetTower(nn.Module):
    """conv1..conv5 + fc6 of CaffeNet for 96-px patches; Caffe-style ceil-mode pooling gives 3x3 at pool5."""

    def __init__(self, width: float = 1.0, fc6: int = 4096):
        super().__init__()
        c1, c2, c3, c4, c5 = (_scaled(c, width) for c in (96, 256, 384, 384, 256))
        self.fc6_dim = _scaled(fc6, width)
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, stride=4, padding=5), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True), nn.LocalResponseNorm(5, 1e-4, 0.75),
            nn.Conv2d(c1, c2, 5, padding=2, groups=2 if c1 % 2 == 0 and c2 % 2 == 0 else 1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True), nn.LocalResponseNorm(5, 1e-4, 0.75),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1, bias=False), nn.BatchNorm2d(c4), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1, bias=False), nn.BatchNorm2d(c5), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        self.fc6 = nn.Sequential(nn.Flatten(), nn.LazyLinear(self.fc6_dim, bias=False), nn.BatchNorm1d(self.fc6_dim),
                                 nn.ReLU(inplace=True))
        self.out_dim = self.fc6_dim

    def pooled(self, x: torch.Tensor, layer: str = "conv5") -> torch.Tensor:
        """Globally average-pooled features of a layer (for probes): conv1..conv5 or fc6."""
        if layer == "fc6":
            return self.forward(x)
        stop = {"conv1": 2, "conv2": 6, "conv3": 11, "conv4": 14, "conv5": 17}[layer]
        return self.features[:stop](x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc6(self.features(x))


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ResNet18Tower(nn.Module):
    """ResNet-18 for 96-px inputs: a 3x3 stem without max-pool (96 -> 48 -> 24 -> 12 -> 6), global pooling."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        widths = [_scaled(c, width) for c in (64, 128, 256, 512)]
        layers = [nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        cin = widths[0]
        for index, cout in enumerate(widths):
            layers += [_Basic(cin, cout, 1 if index == 0 else 2), _Basic(cout, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_dim = cin

    def pooled(self, x: torch.Tensor, layer: str = "conv5") -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class ClassifierHead(nn.Module):
    """fc7 (BN) -> fc8 -> classifier of an item from the fc6 features of its `inputs` patches (`classify`: fc7 per
    patch where that is cheaper; `forward`: on the features side by side); in training, `dropout` drops the fc6
    features and fc7's outputs (CaffeNet's drop6 and drop7)."""

    def __init__(self, in_dim: int, inputs: int, classes: int, width: float = 1.0, hidden: int = 4096,
                 dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        hidden = _scaled(hidden, width)
        self.dropout = dropout
        # dropout is applied in forward, not as modules here, so that the state-dict keys stay those of older checkpoints
        self.layers = nn.Sequential(
            nn.Linear(inputs * in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )

    def forward(self, item_features: torch.Tensor) -> torch.Tensor:
        """Logits of items whose patch features are already side by side ([M, inputs * in_dim]). With dropout in
        training, drop6 is drawn per item slot here, per patch in `classify` (what PretextNet runs)."""
        if not (self.training and self.dropout):
            return self.layers(item_features)
        fc7 = self.layers[:3](F.dropout(item_features, self.dropout, training=True))
        return self.layers[3:](F.dropout(fc7, self.dropout, training=True))

    def classify(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits of the items whose patches `index` [M, inputs] lists, from each patch's features [N, in_dim].

        fc7's weight is k blocks side by side, W = [W_1 ... W_k], so fc7(f_a, f_b, ...) = W_1 f_a + W_2 f_b + ...
        When items outnumber patches (relative position: ~5 pairs per patch), each patch goes through all k blocks
        once and the items add up their rows: N * k products of a block instead of M * k. When patches outnumber
        items (a jigsaw tile is in one puzzle) the features are put side by side as `forward` takes them. Dropout's
        drop6 is drawn once per patch, so the two ways compute the same function."""
        if self.training and self.dropout:
            features = F.dropout(features, self.dropout, training=True)
        if features.shape[0] >= index.shape[0]:
            fc7 = self.layers[0](head_input(features, index))
        else:
            fc7 = _blockwise_linear(self.layers[0], features, index)
        fc7 = self.layers[1:3](fc7)
        if self.training and self.dropout:
            fc7 = F.dropout(fc7, self.dropout, training=True)
        return self.layers[3:](fc7)


class PairHead(ClassifierHead):
    """The relative-position head: two patches, 8 classes."""

    def __init__(self, in_dim: int, width: float = 1.0, hidden: int = 4096):
        super().__init__(in_dim, 2, 8, width, hidden)


def head_input(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[M, k * D]: the features of every item's k patches side by side, in the order `index` lists them."""
    return torch.cat([features[index[:, j]] for j in range(index.shape[1])], dim=1)


def _blockwise_linear(linear: nn.Linear, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """linear(head_input(features, index)) computed per patch: every patch times each of the k weight blocks, then
    each item's k rows added (the same sum in another rounding order)."""
    k = index.shape[1]
    hidden, width = linear.out_features, linear.in_features // k
    blocks = linear.weight.view(hidden, k, width).transpose(0, 1).reshape(k * hidden, width)
    per_patch = (features @ blocks.t()).view(features.shape[0], k, hidden)
    # summed in float32 (a no-op for float32), rounded once like the concatenated product under bf16/fp16 autocast
    summed = per_patch.float()
    out = summed[:, 0].index_select(0, index[:, 0])
    for j in range(1, k):
        out = out + summed[:, j].index_select(0, index[:, j])
    if linear.bias is not None:
        out = out + linear.bias
    return out.to(per_patch.dtype)


class PretextNet(nn.Module):
    """Encodes each patch once and classifies every item from its patches' features (ClassifierHead.classify: fc7
    per patch or on the features side by side): the pair's relative position, the puzzle's permutation."""

    def __init__(self, tower: nn.Module, head: ClassifierHead):
        super().__init__()
        self.tower = tower
        self.head = head

    def forward(self, patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.tower(patches), index)


RelposNet = PretextNet  # the name before jigsaw puzzles


def build_tower(arch: str = "caffenet", width: float = 1.0, patch: int = 96) -> nn.Module:
    if arch == "caffenet":
        if patch < 36:
            raise ValueError(f"the caffenet tower needs patches of at least 36 px, got {patch}")
        tower = CaffeNetTower(width)
        with torch.no_grad():  # materialise the lazy fc6 (3x3 x conv5 channels at 96 px)
            tower(torch.zeros(2, 3, patch, patch))
        return tower
    if arch == "resnet18":
        return ResNet18Tower(width)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def build_model(arch: str = "caffenet", width: float = 1.0, patch: int = 96) -> PretextNet:
    """The relative-position network (other tasks: relpos.pretext.build_pretext(...).build_model)."""
    tower = build_tower(arch, width, patch)
    return PretextNet(tower, PairHead(tower.out_dim, width))


def check_fits(build, weights: dict) -> None:
    """Raise RuntimeError (load_state_dict's, naming each mismatch) unless `weights` fit the module `build()` makes.
    The module is made on the meta device: options that claim an enormous model (a crafted checkpoint's width)
    cost nothing to check, where building it for real would take the machine's memory before any check."""
    with torch.device("meta"):
        module = build()
    module.load_state_dict(weights, assign=True)  # assign: no copy into meta tensors; shapes are checked first
