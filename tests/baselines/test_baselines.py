import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import expm

from torch_staged.baselines import (
    BASELINES,
    Correlation,
    Forest,
    Lasso,
    LinearExtrapolation,
    Persistence,
    Ridge,
)
from torch_staged.data import build_tissue_graph

GENES = ['a', 'b', 'c', 'd']
#: dx/dt = A x, with A[target, source]; a -> b (+0.8), c -| d (-0.6), b -> c (+0.5)
A = np.array([[-0.5, 0.0, 0.0, 0.0],
              [0.8, -0.7, 0.0, 0.0],
              [0.0, 0.5, -0.6, 0.0],
              [0.0, 0.0, -0.6, -0.4]])


def _linear_tissue(num_cells=60, seed=0):
    times = np.linspace(0, 2, 21)
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 8, (num_cells, 2))
    data = build_tissue_graph(pos, np.zeros(num_cells, dtype=int), GENES, k=4,
                              lr_pairs=pd.DataFrame({'ligand': [], 'receptor': []}))
    x0 = rng.uniform(0.5, 2.0, (num_cells, 4))
    X = np.stack([x0 @ expm(A * s).T for s in times])
    return data, torch.tensor(X), torch.tensor(times)


def _lookup(intra, source, target):
    row = intra[(intra['source'] == source) & (intra['target'] == target)]
    return float(row['score'].iloc[0])


def test_ridge_recovers_a_linear_system():
    data, X, t = _linear_tissue()
    ridge = Ridge().fit(data, X, t)
    for problem, fitted in zip(ridge.problems_, ridge.fits_):
        v = problem.target
        expected = np.r_[A[v, problem.sources], A[v, v]]
        np.testing.assert_allclose(fitted['raw'], expected, atol=0.02)
    intra, inter = ridge.interaction_tables()
    assert len(intra) == 12 and len(inter) == 0
    assert list(intra.columns) == ['cell_type', 'source', 'target', 'score', 'abs_score',
                                   'n_edges']
    assert set(map(tuple, intra.iloc[:3][['source', 'target']].values)) == {
        ('a', 'b'), ('c', 'd'), ('b', 'c')}
    assert _lookup(intra, 'c', 'd') < 0 < _lookup(intra, 'a', 'b')
    assert (intra['n_edges'] == 60).all()


def test_ridge_forecast_follows_the_linear_system():
    data, X, t = _linear_tissue()
    ridge = Ridge().fit(data, X[:15], t[:15])
    pred = ridge.forecast(X[:15], t[:15], t[15:])
    assert pred.shape == X[15:].shape
    assert float((pred - X[15:]).abs().max()) < 0.02


def test_lasso_zeroes_absent_edges():
    data, X, t = _linear_tissue()
    intra, _ = Lasso().fit(data, X, t).interaction_tables()
    true = {('a', 'b'), ('c', 'd'), ('b', 'c')}
    keys = list(zip(intra['source'], intra['target']))
    false_scores = intra['abs_score'][[k not in true for k in keys]]
    true_scores = intra['abs_score'][[k in true for k in keys]]
    assert true_scores.min() > 10 * max(false_scores.max(), 1e-6)
    assert (false_scores < 0.02).all()


def test_correlation_is_pearson_of_regressor_and_derivative():
    data, X, t = _linear_tissue()
    intra, _ = Correlation().fit(data, X, t).interaction_tables()
    Xn = X.numpy()
    mid = 0.5 * (Xn[1:] + Xn[:-1])
    dydt = np.diff(Xn, axis=0) / np.diff(t.numpy())[:, None, None]
    expected = np.corrcoef(mid[:, :, 0].ravel(), dydt[:, :, 1].ravel())[0, 1]
    assert _lookup(intra, 'a', 'b') == pytest.approx(expected, abs=1e-10)


def test_forest_ranks_a_nonlinear_regulator_first():
    rng = np.random.default_rng(0)
    data, X, t = _linear_tissue()
    Xn = X.numpy().copy()
    # d follows (a - 1)^2, a non-monotone effect that a linear score misses
    target = (Xn[:, :, 0] - 1.25) ** 2
    Xn[:, :, 3] = np.cumsum(np.r_[[Xn[0, :, 3]], target[:-1] * 0.1], axis=0)
    Xn[:, :, 3] += 0.001 * rng.standard_normal(Xn[:, :, 3].shape)
    intra, _ = Forest(n_estimators=50).fit(data, torch.tensor(Xn), t).interaction_tables()
    d = intra[intra['target'] == 'd']
    assert d.iloc[0]['source'] == 'a' and (intra['score'] >= 0).all()


def test_intercellular_regressor_is_the_neighbour_average_per_sender_type():
    rng = np.random.default_rng(1)
    N = 80
    pos = rng.uniform(0, 9, (N, 2))
    cell_type = np.r_[np.zeros(40, int), np.ones(40, int)]
    data = build_tissue_graph(pos, cell_type, ['L', 'R', 'Z'], lr_pairs=[('L', 'R'), ('Z', 'R')],
                              grn=None, k=5)
    from torch_staged.data._neighbors import knn_edges
    src, dst, _ = knn_edges(pos, 5)
    T, dt = 30, 0.05
    X = np.zeros((T, N, 3))
    X[0] = rng.uniform(0, 1, (N, 3))
    Lt = rng.uniform(0, 1, (T, N))  # ligand and Z driven externally
    Zt = rng.uniform(0, 1, (T, N))
    for k in range(T - 1):  # R of type-1 cells follows L of type-0 neighbours only
        X[k, :, 0], X[k, :, 2] = Lt[k], Zt[k]
        from_type0 = np.bincount(dst, weights=X[k, src, 0] * (cell_type[src] == 0),
                                 minlength=N) / 5
        X[k + 1, :, 1] = X[k, :, 1] + dt * (2.0 * from_type0 * (cell_type == 1)
                                            - X[k, :, 1])
    X[-1, :, 0], X[-1, :, 2] = Lt[-1], Zt[-1]
    Xg = data.cells_to_graph(torch.tensor(X), dim=1)
    ridge = Ridge(point='left').fit(data, Xg, torch.arange(T) * dt)
    _, inter = ridge.interaction_tables()
    top = inter.iloc[0]
    assert (top['ligand'], top['receptor'], top['sender_type'], top['receiver_type']) == (
        'L', 'R', '0', '1')
    assert top['score'] > 0 and inter.iloc[1]['abs_score'] < 0.2 * top['abs_score']


def test_persistence_and_linear_extrapolation_are_exact_where_they_should_be():
    t = torch.tensor([0.0, 1.0, 2.0, 3.0])
    X = torch.stack([torch.full((2, 3), 1.0 + 0.5 * s) for s in t.tolist()])
    lin = LinearExtrapolation().fit().forecast(X[:2], t[:2], t[2:])
    torch.testing.assert_close(lin, X[2:])
    per = Persistence().fit().forecast(X[:2], t[:2], t[2:])
    torch.testing.assert_close(per, X[1:2].expand(2, 2, 3))
    with pytest.raises(NotImplementedError, match='does not score'):
        Persistence().interaction_tables()


def test_bad_input_is_named():
    data, X, t = _linear_tissue()
    with pytest.raises(ValueError, match=r"'X' must have shape \[T, 60, 4\]"):
        Ridge().fit(data, X[:, :10], t)
    with pytest.raises(ValueError, match="strictly increasing"):
        Ridge().fit(data, X, t.flip(0))
    with pytest.raises(ValueError, match="'point' must be"):
        Ridge(point='right')
    assert set(BASELINES) == {'persistence', 'linear_extrapolation', 'ridge', 'lasso',
                              'forest', 'correlation'}
    assert repr(Ridge()) == "Ridge(point='mid')"
