"""The KAN paper's toy (Liu et al. 2024, Fig. 2.3): a [2, 5, 1] B-spline KAN fits exp(sin(pi x) + y^2) and its test
error falls as the grid is extended 3 -> 5 -> 10."""

import pytest

from kanformer.studies.toy import grid_refinement, symbolic_recovery


def test_grid_extension_lowers_test_error():
    result = grid_refinement(widths=(2, 5, 1), grids=(3, 5, 10), steps=20)
    rmse = dict(zip(result.grids, result.test_rmse, strict=True))
    assert rmse[10] < 1e-2, rmse
    assert rmse[3] > rmse[5] > rmse[10], rmse
    assert result.params[0] < result.params[1] < result.params[2]


def test_grid_refinement_rejects_bad_grids():
    with pytest.raises(ValueError, match="grids must be a non-empty list of sizes >= 1"):
        grid_refinement(grids=(3, 0))


@pytest.mark.slow
def test_symbolic_recovery_of_the_paper_formula():
    """Sparsify, prune [2, 5, 1] -> [2, 1, 1], snap: sin(pi x) and y^2 into exp, as in the KAN paper."""
    rec = symbolic_recovery()
    assert rec.widths_after == [2, 1, 1]
    names = [[f.name for f in row] for layer in rec.fits for row in layer]
    assert names == [["sin", "x^2"], ["exp"]]
    assert all(f.r2 > 0.99 for layer in rec.fits for row in layer for f in row)
    assert rec.rmse_formula < 1e-2, rec.formula
