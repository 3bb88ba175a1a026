"""The evaluation code itself, on features where the answer is known."""

import torch

from relpos.probe import knn_accuracy, linear_probe


def _separable(generator, n=120, dim=16, classes=4, noise=0.1):
    centres = 5 * torch.randn(classes, dim, generator=generator)
    y = torch.arange(n) % classes
    x = centres[y] + noise * torch.randn(n, dim, generator=generator)
    return x, y


def test_probe_and_knn_are_perfect_on_separable_features(generator):
    x, y = _separable(generator)
    x_test = x + 0.05 * torch.randn(x.shape, generator=generator)
    assert linear_probe(x, y, x_test, y, classes=4) == 1.0
    assert knn_accuracy(x, y, x_test, y, classes=4) == 1.0


def test_probe_and_knn_are_at_chance_on_random_labels(generator):
    x = torch.randn(400, 32, generator=generator)
    y = torch.randint(0, 4, (400,), generator=generator)
    x_test = torch.randn(400, 32, generator=generator)
    y_test = torch.randint(0, 4, (400,), generator=generator)
    assert abs(linear_probe(x, y, x_test, y_test, classes=4) - 0.25) < 0.1
    assert abs(knn_accuracy(x, y, x_test, y_test, classes=4) - 0.25) < 0.1


def test_probe_uses_the_informative_dimension(generator):
    # one informative feature among 20 noise features: the probe must find it
    n = 300
    y = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, 21, generator=generator)
    x[:, 7] = y.float() * 4 + 0.3 * torch.randn(n, generator=generator)
    y_test = torch.randint(0, 2, (n,), generator=generator)
    x_test = torch.randn(n, 21, generator=generator)
    x_test[:, 7] = y_test.float() * 4 + 0.3 * torch.randn(n, generator=generator)
    assert linear_probe(x, y, x_test, y_test, classes=2) > 0.95
