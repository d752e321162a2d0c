"""Interpretation tables and figures on the ground-truth simulator."""
import numpy as np
import pandas as pd
import pytest
import torch

from torch_staged import perturb
from torch_staged.interpret import (
    edge_scores,
    interaction_tables,
    response_curves,
    response_table,
    signalling_heatmaps,
    spatial_edge_map,
    strongest_pair,
)
from torch_staged.metrics import auroc, interaction_recovery
from torch_staged.models import make_model
from torch_staged.sim import graph_from_simulation, simulate_tissue
from torch_staged.train import fit
from torch_staged.typing import REGULATES, SIGNALS

INTER_KEYS = ['ligand', 'receptor', 'sender_type', 'receiver_type']
INTRA_KEYS = ['cell_type', 'source', 'target']


def _fit_tissue(**options):
    adata = simulate_tissue(50, num_genes=8, num_pairs=2, num_decoy_pairs=1, noise=0.02,
                            times=np.linspace(0.0, 8.0, 9), seed=1)
    data, X, t = graph_from_simulation(adata)
    X = data.cells_to_graph(X, dim=1)
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    torch.manual_seed(0)
    model = make_model('staged', data.num_genes, data.num_cell_types, hidden_channels=8,
                       mlp_channels=16, type_dim=4, method='rk4',
                       options={'step_size': 0.5}, **options.pop('model', {}))
    fit(model, data, lr=0.02, holdout=None, progress=False, **options)
    return adata, data, X, t, model


@pytest.fixture(scope='module')
def fitted():
    """The package's defaults (gates, gene-pair scores, gradient matching)."""
    return _fit_tissue()


@pytest.fixture(scope='module')
def fitted_softmax():
    """The original STAGED layer and protocol: softmax attention, one-step solves."""
    return _fit_tissue(model=dict(normalize='softmax', pair_dim=0, score_state=True,
                                  value_channels=0, value_embedding=True),
                       loss='one_step', batch_intervals=False, epochs=8, patience=None,
                       gene_weights=None)


def _is_true(table, truth):
    strength = truth.set_index(INTER_KEYS)['strength']
    keys = list(map(tuple, table[INTER_KEYS].to_numpy()))
    return np.asarray([strength.get(k, 0.0) > 0 for k in keys])


def test_jacobian_tables_rank_true_intercellular_edges_first(fitted_softmax):
    # Table level: 27 (pair, sender type, receiver type) rows, of which only 2
    # are true couplings. A short fit of the original layer measured AUROC 0.98
    # (true rows at ranks 1 and 3); over seeds 0-5 of this setup AUROC was
    # 0.68-1.0, mean 0.86, so the seed is fixed. (The defaults, gates and
    # gradient matching, measured 0.92 on this seed: true rows 1st and 6th; see
    # benchmarks/science.py for their figures over seeds.) With 2 positives a
    # random ranking is noisy (its 99th
    # percentile AUROC is 0.94), so the test asserts the joint event "AUROC >
    # 0.95 and a true row first", which random rankings of the same rows reach
    # in about 1% of draws (checked below).
    adata, data, X, t, model = fitted_softmax
    truth = adata.uns['truth']['intercellular']
    _, inter = interaction_tables(model, data, method='jacobian')
    rec = interaction_recovery(inter, truth, INTER_KEYS, 'abs_score')
    assert rec['auroc'] > 0.95, rec
    assert _is_true(inter.iloc[:1], truth)[0]  # the strongest learned row is true

    label = _is_true(inter, truth)
    assert auroc(inter['abs_score'].to_numpy(), label) > 0.95
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        order = rng.permutation(label.size)  # a random ranking of the same rows
        score = np.empty(label.size)
        score[order] = np.arange(label.size, 0, -1)
        hits += auroc(score, label) > 0.95 and label[order[0]]
    assert hits / 2000 < 0.02  # measured 1.0%


def test_jacobian_edge_scores_separate_true_signalling_edges(fitted):
    # Edge level: every signalling edge is labelled by its (pair, sender type,
    # receiver type) coupling; hundreds of positives, so a random score stays
    # within a few hundredths of 0.5. Measured: 0.93.
    adata, data, X, t, model = fitted
    truth = adata.uns['truth']['intercellular']
    score = edge_scores(model, data, method='jacobian')[SIGNALS].abs().numpy()
    G = data.num_genes
    types = np.asarray(data.cell_type_names)
    cell_type = data['cell'].cell_type.numpy()
    src, dst = data[SIGNALS].edge_index.numpy() // G
    pairs = np.asarray(data.lr_pairs, dtype=object).reshape(-1, 2)
    lr = data[SIGNALS].lr_pair.numpy()
    edges = pd.DataFrame({'ligand': pairs[lr, 0].astype(str),
                          'receptor': pairs[lr, 1].astype(str),
                          'sender_type': types[cell_type[src]],
                          'receiver_type': types[cell_type[dst]]})
    label = _is_true(edges, truth)
    assert 20 < label.sum() < label.size - 20
    value = auroc(score, label)
    assert value > 0.75, value


@pytest.mark.parametrize('method', ['jacobian', 'attention'])
def test_table_structure(fitted, method):
    _, data, X, _, model = fitted
    intra, inter = interaction_tables(model, data, X[:3], method=method)
    assert list(intra.columns) == INTRA_KEYS + ['score', 'abs_score', 'n_edges']
    assert list(inter.columns) == INTER_KEYS + ['score', 'abs_score', 'n_edges']
    for table, rel in ((intra, REGULATES), (inter, SIGNALS)):
        assert int(table['n_edges'].sum()) == data[rel].num_edges
        assert (np.diff(table['abs_score'].to_numpy()) <= 0).all()  # sorted
        assert not table.duplicated(list(table.columns[:-3])).any()
        assert (table['abs_score'] >= table['score'].abs() - 1e-7).all()
    if method == 'attention':  # signed gates in (-1, 1) (softmax weights: [0, 1])
        low = -1 if model.func.conv.normalize == 'gate' else 0
        assert (inter['score'] >= low - 1e-6).all() and (inter['score'] <= 1 + 1e-6).all()
        assert model.func.conv.normalize == 'gate' and (inter['score'] < 0).any()
    scores = edge_scores(model, data, X[:3], method=method)
    assert scores[REGULATES].shape == (data[REGULATES].num_edges, )
    assert scores[SIGNALS].shape == (data[SIGNALS].num_edges, )


def test_ensemble_tables_average_the_members(fitted):
    """An ensemble's rows are the members' means, with their spread."""
    _, data, X, _, model = fitted
    scores = edge_scores(model, data, X[:3])
    intra, inter = interaction_tables(model, data, scores=scores)
    tripled = {rel: 3 * value for rel, value in scores.items()}
    flipped = {rel: -value for rel, value in scores.items()}
    ensemble = interaction_tables([model, model], data, scores=[scores, tripled])
    for single, table in zip((intra, inter), ensemble):
        keys = list(single.columns[:-3])
        both = single.merge(table, on=keys, suffixes=('', '_ens'))
        assert len(both) == len(single) == len(table)
        np.testing.assert_allclose(both['score_ens'], 2 * both['score'], rtol=1e-5,
                                   atol=1e-8)
        np.testing.assert_allclose(both['abs_score_ens'], 2 * both['abs_score'],
                                   rtol=1e-5, atol=1e-8)
        # sd over members of (a, 3a) = sqrt(2) a
        np.testing.assert_allclose(both['abs_score_sd'], np.sqrt(2) * both['abs_score'],
                                   rtol=1e-5, atol=1e-8)
        assert (np.diff(table['abs_score'].to_numpy()) <= 0).all()
    # two edges of one row swapped between the members: the same row strength,
    # so no spread, although the two edges' scores differ between the members
    G = data.num_genes
    src, dst = data[REGULATES].edge_index
    key = data['cell'].cell_type[dst // G] * G * G + (src % G) * G + dst % G
    value = scores[REGULATES]
    row = next(k for k in key.unique() if value[key == k].abs().unique().numel() > 1)
    edges = (key == row).nonzero().view(-1)
    a, b = edges[0], next(e for e in edges[1:] if value[e].abs() != value[edges[0]].abs())
    swapped = dict(scores)
    swapped[REGULATES] = value.clone()
    swapped[REGULATES][a], swapped[REGULATES][b] = value[b], value[a]
    intra_s, _ = interaction_tables([model, model], data, scores=[scores, swapped])
    types, genes = np.asarray(data.cell_type_names), np.asarray(data.gene_names)
    name = (types[int(row) // (G * G)], genes[int(row) // G % G], genes[int(row) % G])
    hit = intra_s.set_index(INTRA_KEYS).loc[name]
    assert hit['abs_score_sd'] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(intra_s['abs_score_sd'], 0.0, atol=1e-9)
    # opposite signs cancel in the mean score but not in the strength
    intra_f, _ = interaction_tables([model, model], data, scores=[scores, flipped])
    both = intra.merge(intra_f, on=INTRA_KEYS, suffixes=('', '_ens'))
    np.testing.assert_allclose(both['score_ens'], 0.0, atol=1e-7)
    np.testing.assert_allclose(both['abs_score_ens'], both['abs_score'], rtol=1e-6)


def test_ensemble_of_copies_is_the_single_model(fitted):
    _, data, X, _, model = fitted
    intra, inter = interaction_tables(model, data, X[:2])
    intra2, inter2 = interaction_tables([model, model], data, X[:2])
    assert list(intra2.columns) == INTRA_KEYS + ['score', 'abs_score', 'n_edges',
                                                 'abs_score_sd']
    pd.testing.assert_frame_equal(intra, intra2.drop(columns='abs_score_sd'))
    pd.testing.assert_frame_equal(inter, inter2.drop(columns='abs_score_sd'))
    assert (intra2['abs_score_sd'] == 0).all()


def test_ensemble_bad_input_raises(fitted):
    _, data, X, _, model = fitted
    with pytest.raises(ValueError, match="empty sequence"):
        interaction_tables([], data, X[:2])
    other = make_model('staged', data.num_genes + 1, data.num_cell_types)
    with pytest.raises(ValueError, match=r"Model 1 of the ensemble does not fit"):
        interaction_tables([model, other], data, X[:2])
    scores = edge_scores(model, data, X[:2])
    for bad_model, bad_scores in (([model, model], [scores]), ([model, model], scores),
                                  (model, [scores, scores]), (model, [])):
        with pytest.raises(ValueError, match=r"one edge_scores\(\) dict per model"):
            interaction_tables(bad_model, data, scores=bad_scores)
    plain = make_model('no_signalling', data.num_genes, data.num_cell_types)
    with pytest.raises(ValueError, match="same variant"):
        interaction_tables([model, plain], data, X[:2])
    no_signals = edge_scores(plain, data, X[:2])
    with pytest.raises(ValueError, match="same variant"):
        interaction_tables([model, plain], data, scores=[scores, no_signals])
    # a model may know more cell types than the tissue has, as for one model
    wider = make_model('staged', data.num_genes, data.num_cell_types + 1)
    intra, _ = interaction_tables([model, wider], data, X[:2])
    assert 'abs_score_sd' in intra.columns


def test_bad_method_raises(fitted):
    _, data, _, _, model = fitted
    with pytest.raises(ValueError, match="'method' must be one of"):
        interaction_tables(model, data, method='shap')


def test_figures(fitted, tmp_path):
    _, data, X, t, model = fitted
    import matplotlib.pyplot as plt
    _, inter = interaction_tables(model, data, method='jacobian')
    signalling_heatmaps(inter, data.cell_type_names, path=tmp_path / 'heat.png')
    scores = edge_scores(model, data, method='jacobian')[SIGNALS]
    pair = strongest_pair(data, scores)
    assert pair in [tuple(map(str, p)) for p in data.lr_pairs]
    spatial_edge_map(data, scores, *pair, path=tmp_path / 'map.png')
    with pytest.raises(ValueError, match='not in the tissue'):
        spatial_edge_map(data, scores, 'L0', 'G0')
    result = perturb(model, data, X[0], t, knockout=pair[0])
    table = response_table(result, data.gene_names)
    assert table.shape == (t.numel(), data.num_genes)
    assert table.loc[:, pair[0]].iloc[-1] < 0  # the clamped ligand went down
    response_curves(result, data.gene_names, exclude=[pair[0]],
                    path=tmp_path / 'curves.png')
    plt.close('all')
    for name in ('heat.png', 'map.png', 'curves.png'):
        assert (tmp_path / name).stat().st_size > 1000
