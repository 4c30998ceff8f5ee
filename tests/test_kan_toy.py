"""The KAN paper's toy (Liu et al. 2024, Fig. 2.3): a [2, 5, 1] B-spline KAN fits exp(sin(pi x) + y^2) and its test
error falls as the grid is extended 3 -> 5 -> 10."""

import math

import torch

from kanformer import KAN


def _target(x):
    return torch.exp(torch.sin(math.pi * x[:, :1]) + x[:, 1:] ** 2)


def _train(net, x, y, steps):
    opt = torch.optim.LBFGS(net.parameters(), lr=1, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-32, tolerance_change=1e-32)

    def closure():
        opt.zero_grad()
        loss = (net(x) - y).square().mean()
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)


def test_grid_extension_lowers_test_error():
    g = torch.Generator().manual_seed(0)
    x_train = torch.rand(1000, 2, generator=g, dtype=torch.float64) * 2 - 1
    x_test = torch.rand(1000, 2, generator=g, dtype=torch.float64) * 2 - 1
    y_train, y_test = _target(x_train), _target(x_test)
    net = KAN([2, 5, 1], basis="bspline", grid_size=3, grid_range=(-1, 1)).double()
    rmse = {}
    for grid in (3, 5, 10):
        if grid != 3:
            net.update_grid(x_train)
            net.extend_grid(grid, x_train)
        _train(net, x_train, y_train, steps=20)
        with torch.no_grad():
            rmse[grid] = (net(x_test) - y_test).square().mean().sqrt().item()
    assert rmse[10] < 1e-2, rmse
    assert rmse[3] > rmse[5] > rmse[10], rmse
