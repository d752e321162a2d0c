import numpy as np
import pytest

from torch_staged.data._neighbors import knn_edges
from torch_staged.datasets import krumsiek11, krumsiek11_rules, lateral_inhibition
from torch_staged.datasets._boolean import hill_normalised, multilinear, parse_rules
from torch_staged.sim import graph_from_simulation, truth_trajectories


def _states(adata):
    return truth_trajectories(adata)[3].numpy()  # [T, N, G], cell_id order


# ---------------------------------------------------------------- Boolean rules

def test_parse_rules_truth_table_and_names_with_dots():
    (rule,) = parse_rules(['# a comment', 'C = (A or Pu.1) and not C  # tail'])
    assert rule.target == 'C' and rule.inputs == ['A', 'Pu.1', 'C']
    for a in (0, 1):
        for p in (0, 1):
            for c in (0, 1):
                assert rule.table[a, p, c] == bool((a or p) and not c)


def test_parse_rules_rejects_python():
    with pytest.raises(ValueError, match="Unsupported element"):
        parse_rules(['A = B + C'])
    with pytest.raises(ValueError, match="Line 1 is not"):
        parse_rules(['A and B'])


def test_hillcube_interpolates_the_boolean_corners():
    (rule,) = parse_rules(['C = A and not B'])
    assert hill_normalised(np.array([0.0, 1.0]), 3, 0.5).tolist() == [0.0, 1.0]
    for a in (0.0, 1.0):
        for b in (0.0, 1.0):
            value = multilinear(rule.table, [np.array([a]), np.array([b])])
            assert value[0] == float(a == 1.0 and b == 0.0)
    mid = multilinear(rule.table, [np.array([0.5]), np.array([0.5])])
    assert mid[0] == pytest.approx(0.25)


# ---------------------------------------------------------------- krumsiek11

def test_krumsiek11_truth_table():
    rules = krumsiek11_rules()
    assert [r.target for r in rules] == ['Gata2', 'Gata1', 'Fog1', 'EKLF', 'Fli1', 'SCL',
                                         'Cebpa', 'Pu.1', 'cJun', 'EgrNab', 'Gfi1']
    adata = krumsiek11(30, seed=0)
    truth = adata.uns['truth']['intracellular']
    assert len(truth) == 110  # every ordered pair, one cell type
    true = truth[truth['sign'] != 0]
    assert len(true) == 26 and (true['sign'] > 0).sum() == 11
    signs = {(s, t): v for s, t, v in zip(true['source'], true['target'], true['sign'])}
    assert signs[('Gata1', 'Fog1')] == 1 and signs[('Pu.1', 'Gata1')] == -1
    assert signs[('Gfi1', 'EgrNab')] == -1 and ('Gfi1', 'Fog1') not in signs


def test_krumsiek11_deterministic_and_shapes():
    a, b = krumsiek11(50, seed=3), krumsiek11(50, seed=3)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.shape == (15 * 50, 11)
    assert not np.array_equal(a.X, krumsiek11(50, seed=4).X)
    data, X, t = graph_from_simulation(a)
    assert X.shape == (15, 50, 11) and data.edge_counts()['signals'] == 0


def test_krumsiek11_priors():
    prior = krumsiek11(30, prior='half_false', num_cell_types=2, seed=0).uns['grn_prior']
    truth = krumsiek11(30, prior='half_false', num_cell_types=2, seed=0).uns['truth']
    intra = truth['intracellular']
    assert len(prior) == 2 * 52 and (intra['sign'] != 0).sum() == 52
    only_true = krumsiek11(30, prior='true', seed=0).uns['truth']['intracellular']
    assert (only_true['sign'] != 0).all()
    with pytest.raises(ValueError, match="'prior' must be one of"):
        krumsiek11(30, prior='all')


def test_krumsiek11_knockouts_move_targets_with_the_true_sign():
    base = _states(krumsiek11(100, seed=0))
    genes = list(krumsiek11(2, seed=0).var_names)
    g = genes.index
    # Gata1 activates Fog1: knocking it out lowers Fog1.
    ko = _states(krumsiek11(100, knockout='Gata1', seed=0))
    assert ko[-1, :, g('Fog1')].mean() < base[-1, :, g('Fog1')].mean() - 0.2
    # Pu.1 represses Gata1: knocking it out raises Gata1.
    ko = _states(krumsiek11(100, knockout='Pu.1', seed=0))
    assert ko[-1, :, g('Gata1')].mean() > base[-1, :, g('Gata1')].mean() + 0.2
    # Gfi1 is upstream of nothing that reaches Fog1: no change at all.
    ko = _states(krumsiek11(100, knockout='Gfi1', seed=0))
    np.testing.assert_allclose(ko[:, :, g('Fog1')], base[:, :, g('Fog1')], atol=1e-12)


def test_krumsiek11_snapshot_and_size():
    snap = krumsiek11(40, snapshot=True, seed=0)
    assert snap.n_obs == 15 * 20 and snap.uns['truth']['full_trajectories'].shape == (15, 40, 11)
    big = krumsiek11(10_000, times=[0.0, 0.5], seed=0)
    assert big.shape == (20_000, 11)


# ---------------------------------------------------------------- lateral inhibition

def test_lateral_inhibition_forms_salt_and_pepper():
    adata = lateral_inhibition(324, seed=0)
    X = _states(adata)
    high = X[-1, :, 0] > 0.5  # Delta-high cells
    assert 0.1 < high.mean() < 0.4
    src, dst, _ = knn_edges(adata.uns['truth']['cell_pos'], 6)
    both = (high[src] & high[dst]).sum() / max(high[dst].sum() * 6, 1)
    assert both < 0.05  # Delta-high cells inhibit their neighbours


def test_lateral_inhibition_truth_tables():
    adata = lateral_inhibition(64, seed=0)
    pairs = adata.uns['lr_pairs']
    inter = adata.uns['truth']['intercellular']
    assert len(pairs) == 7 and (pairs.iloc[0] == ['Delta', 'Notch']).all()
    assert len(inter) == 7 * 4 and inter['true_pair'].sum() == 4
    assert (inter.loc[inter['true_pair'], 'strength'] > 0).all()
    intra = adata.uns['truth']['intracellular']
    row = intra[(intra['source'] == 'Notch') & (intra['target'] == 'Delta')]
    assert (row['sign'] == -1).all() and len(row) == 2


def _neighbours_of(cells, pos):
    src, dst, _ = knn_edges(pos, 6)
    mask = np.isin(src, cells) & ~np.isin(dst, cells)
    return np.unique(dst[mask])


def test_lateral_inhibition_delta_knockout_lowers_neighbour_notch():
    # over a short time, where the direct ligand -> receptor effect dominates
    # the feedback through the receivers' own Delta
    adata = lateral_inhibition(144, times=[0.0, 0.2], seed=1)
    pos = adata.uns['truth']['cell_pos']
    senders = np.arange(0, 144, 5)
    receivers = _neighbours_of(senders, pos)
    base = _states(adata)
    ko = _states(lateral_inhibition(144, times=[0.0, 0.2], knockout={'Delta': senders},
                                    seed=1))
    assert (ko[1, receivers, 1] < base[1, receivers, 1]).all()
    untouched = np.setdiff1d(np.arange(144), np.r_[senders, receivers])
    np.testing.assert_allclose(ko[1, untouched, 1], base[1, untouched, 1], atol=1e-3)


def test_lateral_inhibition_decoy_ligands_change_nothing_outside():
    adata = lateral_inhibition(144, seed=1)
    senders = np.arange(0, 144, 5)
    others = np.setdiff1d(np.arange(144), senders)
    base = _states(adata)
    for decoy in ('DL1', 'DL2', 'DL3'):
        ko = _states(lateral_inhibition(144, knockout={decoy: senders}, seed=1))
        np.testing.assert_allclose(ko[:, others], base[:, others], atol=1e-12)
        assert not np.allclose(ko[:, senders], base[:, senders])


def test_lateral_inhibition_bad_input():
    with pytest.raises(ValueError, match="'num_cells' must be an integer >= 8"):
        lateral_inhibition(4)
    with pytest.raises(ValueError, match="not in the gene panel"):
        lateral_inhibition(16, knockout='Wnt')
