import copy

import anndata as ad
import numpy as np
import ot
import pandas as pd
import pytest
from scipy import sparse

from torch_staged.io import read_trajectories
from torch_staged.trajectory import infer_trajectories

TIMES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])


def field_snapshots(num_cells=120, fraction=0.5, noise=0.01, seed=0, sparse_x=False):
    r"""Cells on a known smooth, non-linear trajectory field

    .. math:: x(t) = m_\tau + e^{-D t}(x_0 - m_\tau) + \sin(t)\, v

    (per-gene rates :math:`D`, type means :math:`m_\tau`, a shared drift
    :math:`v`), observed as snapshots of a random ``fraction`` of the cells per
    time. Returns the snapshots and the truth ``[T, N, G]``.
    """
    rng = np.random.default_rng(seed)
    G = 5
    pos = rng.uniform(0, np.sqrt(num_cells), (num_cells, 2))
    types = (pos[:, 0] > np.sqrt(num_cells) / 2).astype(int)  # two spatial halves
    means = np.array([[4.0, 6, 3, 5, 4], [6.0, 3, 5, 4, 6]])
    x0 = means[types] + rng.normal(0, 1.0, (num_cells, G))
    rates = np.array([0.1, 0.3, 0.2, 0.05, 0.4])
    drift = np.array([1.0, -0.5, 0.5, 0.0, 0.8])
    truth = np.stack([means[types] + np.exp(-rates * t) * (x0 - means[types])
                      + np.sin(t) * drift for t in TIMES])
    rows = []
    for k in range(TIMES.size):
        size = max(int(round(fraction * num_cells)), 1)
        rows += [(c, k) for c in np.sort(rng.choice(num_cells, size, replace=False))]
    cell, time = np.array(rows).T
    values = np.maximum(truth[time, cell] + noise * rng.standard_normal((cell.size, G)),
                        0.0)
    adata = ad.AnnData(
        X=sparse.csr_matrix(values) if sparse_x else values,
        obs=pd.DataFrame({'cell_id': cell, 'time': TIMES[time],
                          'cell_type': pd.Categorical(np.array(['epi', 'str'])[types[cell]])},
                         index=[f'c{c}_t{k}' for c, k in rows]),
        var=pd.DataFrame(index=[f'g{i}' for i in range(G)]),
        obsm={'spatial': pos[cell]})
    return adata, truth


def _error(out, truth):
    """RMSE of the inferred trajectories of the anchors against their truth."""
    T = len(np.unique(out.obs['time']))
    ids = out.obs['cell_id'].to_numpy()[:out.n_obs // T].astype(int)
    X = np.asarray(out.X).reshape(T, ids.size, -1)
    return float(np.sqrt(((X[1:] - truth[1:, ids]) ** 2).mean())), ids


def _random_matching_error(adata, truth, ids, seed=0):
    """Baseline: each anchor takes a random observed cell of the next snapshots."""
    rng = np.random.default_rng(seed)
    times, X = adata.obs['time'].to_numpy(), np.asarray(adata.X)
    guess = np.stack([X[rng.choice(np.flatnonzero(times == t), ids.size)]
                      for t in np.unique(times)])
    return float(np.sqrt(((guess[1:] - truth[1:, ids]) ** 2).mean()))


def test_recovers_trajectories_when_every_cell_is_observed():
    adata, truth = field_snapshots(fraction=1.0)
    shuffled = adata[np.random.default_rng(1).permutation(adata.n_obs)].copy()
    out = infer_trajectories(shuffled, cell_key='cell_id', reg=0.0)
    error, ids = _error(out, truth)
    assert sorted(ids.tolist()) == list(range(120))
    assert error < 0.02  # the noise level: exact OT recovers every cell's identity


def test_snapshots_close_to_the_truth(unchanged_snapshot):
    adata, truth = field_snapshots(fraction=0.5)
    with unchanged_snapshot(adata):
        out = infer_trajectories(adata, cell_key='cell_id')
    error, ids = _error(out, truth)
    baseline = _random_matching_error(adata, truth, ids)
    assert error < 0.35 * baseline, (error, baseline)
    # a spatial term in the cost (no use here: states are not spatially smooth)
    spatial, _ = _error(infer_trajectories(adata, cell_key='cell_id',
                                           alpha_spatial=0.1), truth)
    assert spatial < 0.5 * baseline, (spatial, baseline)


def test_simulator_snapshot_mode_close_to_the_truth():
    from torch_staged.sim import simulate_tissue
    adata = simulate_tissue(150, snapshot=True, times=np.linspace(0, 4, 9), seed=1)
    truth = adata.uns['truth']['full_trajectories']  # [T, N, G], cell_id order
    out = infer_trajectories(adata, cell_key='cell_id')
    error, ids = _error(out, truth)
    baseline = _random_matching_error(adata, truth, ids)
    # per-type mean of each snapshot: knows the types, not the cells
    times, kinds = adata.obs['time'].to_numpy(), adata.obs['cell_type'].to_numpy()
    anchor_type = np.asarray(adata.uns['truth']['cell_type'])[ids]
    type_mean = np.stack([
        np.stack([np.asarray(adata.X)[(times == t) & (kinds == kind)].mean(0)
                  for kind in anchor_type]) for t in np.unique(times)])
    type_error = float(np.sqrt(((type_mean[1:] - truth[1:, ids]) ** 2).mean()))
    assert error < 0.6 * baseline, (error, baseline)
    assert error < 0.95 * type_error, (error, type_error)
    traj = read_trajectories(out, lr_pairs=adata.uns['lr_pairs'],
                             grn=adata.uns['grn_prior'], k=6)
    assert traj.X.shape == (9, ids.size, 20)


def test_minibatches_bound_the_coupling_size(monkeypatch):
    adata, truth = field_snapshots(num_cells=160, fraction=0.5, seed=2)
    full, _ = _error(infer_trajectories(adata, cell_key='cell_id'), truth)
    shapes = []
    for name in ('sinkhorn', 'emd'):
        solver = getattr(ot, name)

        def record(a, b, M, *args, _solver=solver, **kwargs):
            shapes.append(M.shape)
            return _solver(a, b, M, *args, **kwargs)

        monkeypatch.setattr(ot, name, record)
    out = infer_trajectories(adata, cell_key='cell_id', batch_size=12)
    assert shapes and max(max(s) for s in shapes) <= 12
    assert out.uns['staged_trajectories']['largest_coupling'] <= 12 ** 2
    batched, _ = _error(out, truth)
    assert batched < 1.5 * full, (batched, full)
    shapes.clear()
    infer_trajectories(adata, cell_key='cell_id', batch_size=12, reg=0.0,
                       alpha_spatial=0.5, batch_split='spatial')
    assert max(max(s) for s in shapes) <= 12


def test_output_is_long_format_for_read_trajectories():
    adata, _ = field_snapshots(fraction=0.6, sparse_x=True)
    out = infer_trajectories(adata, genes=['g3', 'g0'], n_components=2,
                             alpha_spatial=0.2, reg=0.1)
    anchors = adata[adata.obs['time'] == 0.0]
    T, A = TIMES.size, anchors.n_obs
    assert out.shape == (T * A, 2) and list(out.var_names) == ['g3', 'g0']
    assert out.obs['cell_id'].tolist()[:A] == anchors.obs_names.tolist()  # no cell_key
    assert out.obs['time'].tolist() == np.repeat(TIMES, A).tolist()
    assert list(out.obs['cell_type'].cat.categories) == ['epi', 'str']
    np.testing.assert_array_equal(out.obsm['spatial'][:A], anchors.obsm['spatial'])
    np.testing.assert_allclose(out.X[:A], anchors.X[:, [3, 0]].toarray(), rtol=1e-6)
    params = out.uns['staged_trajectories']
    assert params['num_anchors'] == A and params['transport_cost'].shape == (T - 1, )
    traj = read_trajectories(out, k=4)
    assert traj.X.shape == (T, A, 2) and traj.cell_types == ['epi', 'str']


def test_bad_settings_and_lost_cell_types():
    adata, _ = field_snapshots()
    for kwargs, message in [(dict(reg=-1.0), "'reg' must be"),
                            (dict(batch_size=1), "'batch_size' must be"),
                            (dict(batch_split='kmeans'), "'batch_split' must be"),
                            (dict(n_components=9), "'n_components' must be"),
                            (dict(alpha_spatial=float('nan')), "'alpha_spatial'")]:
        with pytest.raises(ValueError, match=message):
            infer_trajectories(adata, **kwargs)
    late = (adata.obs['time'] == 2.0).to_numpy() & (adata.obs['cell_type'] == 'str'
                                                     ).to_numpy()
    lost = adata[~late].copy()
    with pytest.raises(ValueError, match=r"\['str'\] have cells at the first time 0 "
                                         r"but none at time 2.*match_types=False"):
        infer_trajectories(lost)
    assert infer_trajectories(lost, match_types=False).n_obs > 0


@pytest.fixture
def unchanged_snapshot():
    class _Guard:
        def __init__(self, adata):
            self.adata, self.before = adata, copy.deepcopy(adata)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            np.testing.assert_array_equal(self.adata.X, self.before.X)
            pd.testing.assert_frame_equal(self.adata.obs, self.before.obs)
            assert list(self.adata.obsm) == list(self.before.obsm)
            assert list(self.adata.uns) == list(self.before.uns)
            return False

    return _Guard
