"""Frozen-feature evaluation: a logistic-regression linear probe and k-nearest-neighbour accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int, seed: int = 0, l2: float = 1e-3, iterations: int = 200) -> float:
    """Test accuracy of a multinomial logistic regression (L-BFGS, L2 penalty) on standardised features."""
    train_x, test_x = standardize(train_x.double(), test_x.double())
    generator = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(train_x.shape[1], classes, generator=generator, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((test_x @ weight + bias).argmax(1) == test_y).double().mean())


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int, k: int = 5) -> float:
    """Accuracy of a k-NN vote (cosine similarity, votes weighted by similarity) on standardised features."""
    train_x, test_x = standardize(train_x.float(), test_x.float())
    similarity = F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T
    k = min(k, train_x.shape[0])
    weights, indices = similarity.topk(k, dim=1)
    votes = torch.zeros(test_x.shape[0], classes).scatter_add_(1, train_y[indices], weights.clamp_min(0) + 1e-6)
    return float((votes.argmax(1) == test_y).float().mean())
