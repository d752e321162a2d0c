"""Tests of :func:`torch_staged.sim.simulate_tissue` and its helpers.

The ground-truth tables are checked against the simulated dynamics with a slow
reference right-hand side written with explicit loops over cells and table
rows, and with knockouts.
"""
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from torch_staged.data._neighbors import knn_edges
from torch_staged.sim import (
    graph_from_simulation,
    simulate_tissue,
    trajectories_from_anndata,
    truth_trajectories,
)

FINE_TIMES = np.linspace(0.0, 8.0, 81)


@pytest.fixture(scope='module')
def default():
    return simulate_tissue(seed=0)


@pytest.fixture(scope='module')
def fine():
    """The default tissue, noise-free, on a fine time grid."""
    return simulate_tissue(seed=0, noise=0.0, times=FINE_TIMES)


def _truth_states(adata):
    return truth_trajectories(adata)[3].numpy()  # [T, N, G]


def _codes(adata):
    return np.array([int(s[1:]) for s in adata.uns['truth']['cell_type']])


def _true_pairs(adata):
    inter = adata.uns['truth']['intercellular']
    return inter[inter['strength'] > 0]


def _signal_input(adata, states, ligand, receptor):
    """Neighbour input of the receptor of every cell, from the truth tables:
    sum_j W(type j, type c) exp(-d / lambda) Hill(ligand of j)  ->  [T, N]."""
    truth = adata.uns['truth']
    genes = list(adata.var_names)
    rows = _true_pairs(adata)
    rows = rows[(rows['ligand'] == ligand) & (rows['receptor'] == receptor)]
    num_types = truth['num_cell_types']
    W = np.zeros((num_types, num_types))
    for _, row in rows.iterrows():
        W[int(row['sender_type'][1:]), int(row['receiver_type'][1:])] = row['strength']
    codes = _codes(adata)
    src, dst, dist = knn_edges(truth['cell_pos'], truth['k'])
    lig = states[:, :, genes.index(ligand)] ** 2
    hill = lig / (truth['ligand_K'] ** 2 + lig)
    weight = W[codes[src], codes[dst]] * np.exp(-dist / truth['length_scale'])
    out = np.zeros(states.shape[:2])
    np.add.at(out.T, dst, weight[:, None] * hill[:, src].T)
    return out, W


# --------------------------------------------------------------------------
# Layout of the AnnData
# --------------------------------------------------------------------------

def test_shapes_and_contents(default):
    adata = default
    truth = adata.uns['truth']
    T, N, G = 17, 300, 20
    assert adata.shape == (T * N, G)
    assert adata.X.dtype == np.float32 and (adata.X >= 0).all()
    assert adata.layers['truth'].shape == (T * N, G)
    assert (adata.layers['truth'] >= 0).all()
    assert list(adata.var_names[:2]) == ['L0', 'L1']
    assert adata.obsm['spatial'].shape == (T * N, 2)
    assert adata.obs['cell_id'].dtype == np.int64
    assert adata.obs['time'].dtype == np.float64
    assert list(adata.obs['cell_type'].cat.categories) == ['T0', 'T1', 'T2']
    assert adata.obs['cell_id'].nunique() == N
    np.testing.assert_allclose(np.unique(adata.obs['time']), np.linspace(0, 8, 17))
    assert adata.obs_names.is_unique
    # the noise is absolute with std `noise` (clipping at 0 aside)
    diff = adata.X - adata.layers['truth']
    positive = adata.layers['truth'] > 0.3
    assert abs(diff[positive].std() - 0.05) < 0.003
    # every type is present, in spatial patches: most neighbours share a type
    codes = _codes(adata)
    assert np.bincount(codes, minlength=3).min() > 0
    src, dst, _ = knn_edges(truth['cell_pos'], 8)
    assert (codes[src] == codes[dst]).mean() > 0.7
    # trajectories are still moving at the last time points
    states = _truth_states(adata)
    step = np.abs(np.diff(states, axis=0)).mean(axis=(1, 2))
    assert step[-1] > 0.1 * step[0]
    # uns
    assert set(adata.uns) == {'lr_pairs', 'grn_prior', 'truth'}
    assert list(adata.uns['lr_pairs'].columns) == ['ligand', 'receptor']
    assert len(adata.uns['lr_pairs']) == 6
    assert list(adata.uns['grn_prior'].columns) == ['source', 'target', 'cell_type']
    for key, value in dict(seed=0, num_cells=N, num_genes=G, num_cell_types=3,
                           num_pairs=4, num_decoy_pairs=2, k=8, length_scale=1.0,
                           noise=0.05, snapshot=False).items():
        assert truth[key] == value, key
    assert truth['cell_pos'].shape == (N, 2) and truth['basal'].shape == (3, G)
    assert truth['decay'].shape == (3, G) and truth['knockout_mask'].shape == (N, G)
    assert not truth['knockout_mask'].any()
    assert 'full_trajectories' not in truth
    roles = truth['genes']['role'].value_counts().to_dict()
    assert roles == {'ligand': 4, 'receptor': 4, 'decoy_ligand': 2,
                     'decoy_receptor': 2, 'other': 8}


def test_truth_tables(default):
    adata = default
    truth = adata.uns['truth']
    intra, inter = truth['intracellular'], truth['intercellular']
    roles = dict(zip(truth['genes']['gene'], truth['genes']['role']))
    assert list(intra.columns[:5]) == ['cell_type', 'source', 'target', 'sign',
                                       'strength']
    assert list(inter.columns[:5]) == ['ligand', 'receptor', 'sender_type',
                                       'receiver_type', 'strength']
    # the prior is the intracellular table: true edges plus as many false ones
    pd.testing.assert_frame_equal(adata.uns['grn_prior'],
                                  intra[['source', 'target', 'cell_type']])
    assert not intra.duplicated(['cell_type', 'source', 'target']).any()
    assert (intra['source'] != intra['target']).all()
    true_edges = intra[intra['strength'] != 0]
    assert len(true_edges) == 3 * 20 * 2  # 2 regulators per gene and type
    assert len(intra) == 2 * len(true_edges)  # prior_false_edges=1.0
    assert (np.sign(intra['strength']) == intra['sign']).all()
    # some edges shared by all types, some type specific
    per_edge = true_edges.groupby(['source', 'target']).size()
    assert (per_edge == 3).any() and (per_edge == 1).any()
    # decoy ligands regulate nothing
    sources = set(true_edges['source'])
    assert not any(roles[g] == 'decoy_ligand' for g in sources)
    # every LR pair of the table x every type pair
    assert len(inter) == 6 * 9
    assert set(zip(inter['ligand'], inter['receptor'])) == set(
        zip(adata.uns['lr_pairs']['ligand'], adata.uns['lr_pairs']['receptor']))
    active = inter[inter['strength'] > 0]
    assert (inter['strength'] >= 0).all()
    assert set(active['ligand']) == {g for g, r in roles.items() if r == 'ligand'}
    assert not inter[~inter['true_pair']]['strength'].any()
    for (ligand, receptor), rows in active.groupby(['ligand', 'receptor']):
        assert rows['sender_type'].nunique() == 1  # pair-specific type pairs
        assert len(rows) < 9
        # the ligand is expressed by its sender type
        sender = int(rows['sender_type'].iloc[0][1:])
        lig = list(adata.var_names).index(ligand)
        assert truth['basal'][sender, lig] == truth['basal'][:, lig].max()
        assert truth['basal'][sender, lig] > 10 * np.median(truth['basal'][:, lig])
        # the receptor activates a downstream target in every receiver type
        for receiver in rows['receiver_type']:
            down = true_edges[(true_edges['source'] == receptor)
                              & (true_edges['cell_type'] == receiver)
                              & (true_edges['strength'] > 0)]
            assert len(down) >= 1


def test_builder_takes_the_priors(default):
    data, X, t = graph_from_simulation(default)
    assert data.num_cells == 300 and data.num_genes == 20
    assert data.cell_type_names == ['T0', 'T1', 'T2']
    assert data.edge_counts() == {'near': 2400, 'regulates': 300 * 80,
                                  'signals': 2400 * 6}
    assert X.shape == (17, 300, 20) and X.dtype == torch.float32
    torch.testing.assert_close(t, torch.linspace(0, 8, 17))
    torch.testing.assert_close(data['gene'].x.view(300, 20),
                               data.cells_to_graph(X[0]))


def test_determinism():
    a = simulate_tissue(60, seed=3)
    b = simulate_tissue(60, seed=3)
    c = simulate_tissue(60, seed=4)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.obsm['spatial'], b.obsm['spatial'])
    pd.testing.assert_frame_equal(a.uns['truth']['intracellular'],
                                  b.uns['truth']['intracellular'])
    assert not np.array_equal(a.X, c.X)
    assert not a.uns['truth']['intracellular'].equals(c.uns['truth']['intracellular'])
    fresh = simulate_tissue(60, seed=None)
    again = simulate_tissue(60, seed=fresh.uns['truth']['seed'])
    np.testing.assert_array_equal(fresh.X, again.X)


def test_h5ad_round_trip(tmp_path):
    for snapshot in (False, True):
        adata = simulate_tissue(50, snapshot=snapshot, knockout={'G0': [1, 2]},
                                seed=1)
        path = tmp_path / f'sim_{snapshot}.h5ad'
        adata.write_h5ad(path)
        back = ad.read_h5ad(path)
        np.testing.assert_array_equal(back.X, adata.X)
        np.testing.assert_array_equal(back.layers['truth'], adata.layers['truth'])
        pd.testing.assert_frame_equal(back.obs, adata.obs)
        for key in ('lr_pairs', 'grn_prior'):
            pd.testing.assert_frame_equal(back.uns[key], adata.uns[key])
        for key, value in adata.uns['truth'].items():
            got = back.uns['truth'][key]
            if isinstance(value, pd.DataFrame):
                pd.testing.assert_frame_equal(got, value)
            elif isinstance(value, np.ndarray):
                np.testing.assert_array_equal(np.asarray(got), value)
            else:
                assert got == value, key
    data, X, t = graph_from_simulation(ad.read_h5ad(tmp_path / 'sim_False.h5ad'))
    assert X.shape == (17, 50, 20)


def test_grid_layout_and_given_tissue():
    adata = simulate_tissue(30, layout='grid', spacing=2.0, seed=0)
    pos = adata.uns['truth']['cell_pos']
    np.testing.assert_array_equal(pos[:7], [[0, 0], [2, 0], [4, 0], [6, 0], [8, 0],
                                            [10, 0], [0, 2]])
    codes = np.arange(30) % 2
    given = simulate_tissue(pos=pos, cell_type=codes, num_cell_types=2, seed=0)
    assert list(given.uns['truth']['cell_type'][:3]) == ['T0', 'T1', 'T0']
    labels = simulate_tissue(pos=pos, cell_type=[f'T{c}' for c in codes],
                             num_cell_types=2, seed=0)
    np.testing.assert_array_equal(labels.X, given.X)


# --------------------------------------------------------------------------
# The truth tables describe the simulated dynamics
# --------------------------------------------------------------------------

def _reference_rhs(adata, x):
    """dx/dt of every cell from the truth tables, with explicit loops."""
    truth = adata.uns['truth']
    genes = list(adata.var_names)
    gi = {g: i for i, g in enumerate(genes)}
    pos, types = truth['cell_pos'], list(truth['cell_type'])
    n, L = truth['hill_n'], truth['length_scale']
    intra = truth['intracellular']
    inter = _true_pairs(adata)
    out = np.zeros_like(x)
    for c in range(x.shape[0]):
        tau = int(types[c][1:])
        for g in range(x.shape[1]):
            out[c, g] = truth['basal'][tau, g] - truth['decay'][tau, g] * x[c, g]
        for _, e in intra[intra['cell_type'] == types[c]].iterrows():
            if e['strength'] == 0:
                continue
            v, K = x[c, gi[e['source']]], e['K']
            hill = v**n / (K**n + v**n) if e['strength'] > 0 else K**n / (K**n + v**n)
            out[c, gi[e['target']]] += abs(e['strength']) * hill
        dist = np.sqrt(((pos - pos[c]) ** 2).sum(1))
        dist[c] = np.inf
        for j in np.argsort(dist, kind='stable')[:truth['k']]:
            for _, p in inter[(inter['receiver_type'] == types[c])
                              & (inter['sender_type'] == types[j])].iterrows():
                v = x[j, gi[p['ligand']]]
                hill = v**n / (truth['ligand_K']**n + v**n)
                out[c, gi[p['receptor']]] += p['strength'] * math.exp(-dist[j] / L) * hill
    return out


def test_truth_tables_give_the_dynamics():
    h = 1e-3
    adata = simulate_tissue(40, num_cell_types=2, noise=0.0,
                            times=[0.0, 1.0, 1.0 + h, 1.0 + 2 * h], seed=5)
    assert len(_true_pairs(adata)) > 0
    states = _truth_states(adata)
    central = (states[3] - states[1]) / (2 * h)
    reference = _reference_rhs(adata, states[2])
    np.testing.assert_allclose(reference, central, rtol=0, atol=1e-5)


def test_knockout_of_a_true_ligand(fine):
    base = fine
    truth = base.uns['truth']
    genes = list(base.var_names)
    intra = truth['intracellular']
    ligand, receptor = _true_pairs(base).iloc[0][['ligand', 'receptor']]
    ko = simulate_tissue(seed=0, noise=0.0, times=FINE_TIMES, knockout=ligand)
    assert ko.uns['truth']['knockout_mask'][:, genes.index(ligand)].all()
    x0, x1 = _truth_states(base), _truth_states(ko)
    assert not x1[:, :, genes.index(ligand)].any()  # clamped to zero

    signal, _ = _signal_input(base, x0, ligand, receptor)
    receives = signal[-1] > 0.05  # cells next to an active sender
    assert 5 < receives.sum() < 300
    delta = np.abs(x1 - x0).max(axis=0)  # [N, G]
    assert (delta[receives, genes.index(receptor)] > 1e-2).all()
    down = intra[(intra['source'] == receptor) & (intra['strength'] > 0)
                 & intra['target'].str.startswith('G')]['target'].unique()
    changed = np.stack([delta[receives, genes.index(g)] for g in down], 1)
    assert (changed.max(1) > 1e-3).all()


def test_knockout_of_a_decoy_changes_nothing_else(fine):
    truth = fine.uns['truth']
    genes = list(fine.var_names)
    decoys = truth['genes'][truth['genes']['role'] == 'decoy_ligand']['gene']
    decoy = decoys.iloc[0]
    intra = truth['intracellular']
    assert not intra[(intra['source'] == decoy) & (intra['strength'] != 0)].size
    g = genes.index(decoy)
    others = np.arange(len(genes)) != g
    base = simulate_tissue(seed=0)
    for knockout in (decoy, [decoy], {decoy: None}):
        ko = simulate_tissue(seed=0, knockout=knockout)
        np.testing.assert_array_equal(ko.layers['truth'][:, others],
                                      base.layers['truth'][:, others])
        np.testing.assert_array_equal(ko.X[:, others], base.X[:, others])
        assert not ko.layers['truth'][:, g].any()
    # a knockout restricted to some cells, by ids or by mask
    ids = [3, 7, 11]
    mask = np.zeros(300, dtype=bool)
    mask[ids] = True
    by_ids = simulate_tissue(seed=0, knockout={decoy: ids})
    by_mask = simulate_tissue(seed=0, knockout={decoy: mask})
    np.testing.assert_array_equal(by_ids.X, by_mask.X)
    cell = by_ids.obs['cell_id'].to_numpy()
    x = by_ids.layers['truth'][:, g]
    assert not x[np.isin(cell, ids)].any() and x[~np.isin(cell, ids)].min() > 0
    np.testing.assert_array_equal(x[~np.isin(cell, ids)],
                                  base.layers['truth'][~np.isin(cell, ids), g])


def test_receptors_depend_on_neighbours(fine):
    truth = fine.uns['truth']
    genes = list(fine.var_names)
    pos, codes = truth['cell_pos'], _codes(fine)
    x0 = _truth_states(fine)
    ligand, receptor = _true_pairs(fine).iloc[0][['ligand', 'receptor']]
    r = genes.index(receptor)
    signal, W = _signal_input(fine, x0, ligand, receptor)
    # the receiver with the strongest input, and a cell of the same type without any
    i = int(np.argmax(signal[-1]))
    same = np.flatnonzero((codes == codes[i]) & (signal.max(0) == 0))
    j = int(same[np.argmax(np.abs(pos[same] - pos[i]).sum(1))])
    # (a) swap the two cells: i moves away from its senders
    moved = pos.copy()
    moved[[i, j]] = pos[[j, i]]
    x1 = _truth_states(simulate_tissue(seed=0, noise=0.0, times=FINE_TIMES, pos=moved,
                                       cell_type=codes))
    assert x0[-1, i, r] - x1[-1, i, r] > 0.2
    assert x1[-1, j, r] - x0[-1, j, r] > 0.2
    # (b) same positions, the neighbours of i change type: i loses its input
    src, dst, _ = knn_edges(pos, truth['k'])
    retyped = codes.copy()
    senders = src[dst == i]
    retyped[senders[W[codes[senders], codes[i]] > 0]] = codes[i]
    x2 = _truth_states(simulate_tissue(seed=0, noise=0.0, times=FINE_TIMES, pos=pos,
                                       cell_type=retyped))
    assert x0[-1, i, r] - x2[-1, i, r] > 0.2
    # the same tissue given explicitly reproduces the simulation
    x3 = _truth_states(simulate_tissue(seed=0, noise=0.0, times=FINE_TIMES, pos=pos,
                                       cell_type=codes))
    np.testing.assert_array_equal(x3, x0)


def _r2_of_fit(features, y):
    coef, *_ = np.linalg.lstsq(features, y, rcond=None)
    return 1 - ((features @ coef - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()


def test_cell_autonomous_features_miss_the_receptor_dynamics(fine):
    """The receptor's time derivative in receiver cells, regressed on the cell's
    own state (quadratic features and type) leaves much unexplained; adding the
    neighbour input of the truth tables explains it."""
    genes = list(fine.var_names)
    states = _truth_states(fine)
    T, N, G = states.shape
    deriv = np.gradient(states, FINE_TIMES, axis=0)[1:-1]
    codes = _codes(fine)
    for (ligand, receptor), _ in _true_pairs(fine).groupby(['ligand', 'receptor']):
        signal, W = _signal_input(fine, states, ligand, receptor)
        receiver = W.sum(0)[codes] > 0
        own = states[1:-1, receiver].reshape(-1, G)
        types = np.eye(3)[codes[receiver]][None].repeat(T - 2, 0).reshape(-1, 3)
        features = np.concatenate([types, own, own**2], 1)
        y = deriv[:, receiver, genes.index(receptor)].reshape(-1)
        autonomous = _r2_of_fit(features, y)
        with_neighbours = _r2_of_fit(
            np.concatenate([features, signal[1:-1, receiver].reshape(-1, 1)], 1), y)
        assert autonomous < 0.8, (receptor, autonomous)
        assert with_neighbours > 0.9, (receptor, with_neighbours)
        assert with_neighbours - autonomous > 0.2


# --------------------------------------------------------------------------
# Snapshots and trajectories
# --------------------------------------------------------------------------

def test_snapshot_mode(default):
    snap = simulate_tissue(seed=0, snapshot=True, snapshot_fraction=0.4)
    truth = snap.uns['truth']
    assert snap.n_obs == 17 * 120
    subsets = [set(snap.obs['cell_id'][snap.obs['time'] == t]) for t in truth['times']]
    assert all(len(s) == 120 for s in subsets)
    assert len({frozenset(s) for s in subsets}) == 17
    assert len(subsets[0] & subsets[1]) < 100
    full = truth['full_trajectories']
    assert full.shape == (17, 300, 20)
    # the full truth is that of the non-snapshot simulation with the same seed
    np.testing.assert_array_equal(full, _truth_states(default))
    time_idx = np.searchsorted(truth['times'], snap.obs['time'])
    cell = snap.obs['cell_id'].to_numpy()
    np.testing.assert_array_equal(snap.layers['truth'], full[time_idx, cell])
    np.testing.assert_array_equal(snap.obsm['spatial'], truth['cell_pos'][cell])
    with pytest.raises(ValueError, match='Snapshot data has no trajectories'):
        trajectories_from_anndata(snap)
    pos, cell_type, genes, X, t = truth_trajectories(snap)
    assert X.shape == (17, 300, 20) and len(cell_type) == 300 and pos.shape == (300, 2)


def test_trajectories_from_anndata(default):
    adata = default
    pos, cell_type, genes, X, t = trajectories_from_anndata(adata)
    assert X.shape == (17, 300, 20) and X.dtype == torch.float32
    assert genes == list(adata.var_names)
    np.testing.assert_array_equal(pos, adata.uns['truth']['cell_pos'])
    np.testing.assert_array_equal(cell_type, adata.uns['truth']['cell_type'])
    row = np.flatnonzero((adata.obs['cell_id'] == 17) & (adata.obs['time'] == 2.5))[0]
    torch.testing.assert_close(X[5, 17], torch.from_numpy(adata.X[row]))
    # row order does not matter; cells come out sorted by id
    shuffled = adata[np.random.default_rng(0).permutation(adata.n_obs)]
    _, _, _, X2, t2 = trajectories_from_anndata(shuffled, layer='truth',
                                                dtype=torch.float64)
    np.testing.assert_array_equal(X2.numpy(), _truth_states(adata))
    torch.testing.assert_close(t2, t.double())
    with pytest.raises(ValueError, match="no column 'sample'"):
        trajectories_from_anndata(adata, cell_key='sample')
    with pytest.raises(ValueError, match='exactly once'):
        trajectories_from_anndata(adata[1:])


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_cells=5, k=8), "'k' must be smaller"),
    (dict(num_genes=10), "'num_genes' must be at least"),
    (dict(layout='hex'), "'layout' must be one of"),
    (dict(noise=-0.1), "'noise'"),
    (dict(snapshot_fraction=0.0), "'snapshot_fraction'"),
    (dict(snapshot_fraction=1.5), "'snapshot_fraction'"),
    (dict(times=[0.0, 2.0, 1.0]), "'times' must be strictly increasing"),
    (dict(times=[1.0]), "'times' must be a 1-D array"),
    (dict(length_scale=0), "'length_scale'"),
    (dict(num_pairs=-1), "'num_pairs' must be an integer >= 0"),
    (dict(num_cell_types=2.5), "'num_cell_types'"),
    (dict(knockout='nope'), "gene 'nope'"),
    (dict(knockout={'G0': [0, 999]}), 'cell ids'),
    (dict(knockout={'G0': np.ones(3, dtype=bool)}), 'cell mask'),
    (dict(pos=np.zeros((10, 3))), "'pos' must have shape"),
    (dict(cell_type=['T0'] * 299 + ['X']), "'cell_type' labels"),
    (dict(cell_type=np.full(300, 5)), "'cell_type' codes"),
    (dict(num_patches=2), "'num_patches'"),
    (dict(regulators_per_gene=50), "'regulators_per_gene'"),
    (dict(regulators_per_gene=0), "'regulators_per_gene' must be an integer >= 1"),
    (dict(seed=-1), "'seed'"),
    (dict(snapshot='yes'), "'snapshot' must be True or False"),
    (dict(init_length_scale=0.0), "'init_length_scale'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_tissue(**kwargs)


def test_spatially_patterned_initial_states():
    # init_length_scale: uniform marginals on [0, init_scale] as before, but
    # neighbouring cells start alike (independent draws: no such correlation)
    from scipy.spatial import cKDTree

    def neighbour_correlation(adata):
        x0 = adata.X[adata.obs['time'].to_numpy() == 0.0]
        pos = adata.obsm['spatial'][adata.obs['time'].to_numpy() == 0.0]
        _, nearest = cKDTree(pos).query(pos, k=2)
        a, b = x0, x0[nearest[:, 1]]
        return np.mean([np.corrcoef(a[:, g], b[:, g])[0, 1] for g in range(x0.shape[1])])

    smooth = simulate_tissue(400, noise=0.0, init_length_scale=3.0, seed=1,
                             times=[0.0, 1.0])
    white = simulate_tissue(400, noise=0.0, seed=1, times=[0.0, 1.0])
    first = smooth.X[smooth.obs['time'].to_numpy() == 0.0]
    assert first.min() >= 0.0 and first.max() <= 2.0
    assert 0.8 < first.mean() < 1.2  # uniform on [0, 2]: mean 1
    assert neighbour_correlation(smooth) > 0.6
    assert abs(neighbour_correlation(white)) < 0.1
    assert smooth.uns['truth']['init_length_scale'] == 3.0
