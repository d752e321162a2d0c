import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from torch_staged.interpret import interaction_tables
from torch_staged.io import Key, read_trajectories, write_results
from torch_staged.models import STAGED
from torch_staged.testing import perturb_parameters

LR_PAIRS = pd.DataFrame({'ligand': ['L0', 'L1'], 'receptor': ['R0', 'R1']})


def _model(num_genes=6, num_types=3, **kwargs):
    torch.manual_seed(0)
    # unequal strengths, as a fitted model's (a fresh one's gates all start alike)
    return perturb_parameters(STAGED(num_genes, num_types, hidden_channels=4,
                                     mlp_channels=8, method='rk4',
                                     options={'step_size': 0.25}, **kwargs))


@pytest.fixture
def fitted(long_adata):
    adata, _ = long_adata
    traj = read_trajectories(adata, lr_pairs=LR_PAIRS, k=3)
    return adata, traj, _model()


def test_write_back_keys_and_shapes(fitted, unchanged):
    adata, traj, model = fitted
    with unchanged(adata):
        out = write_results(adata, model, traj)
    n, T, L = adata.n_obs, 4, 2
    assert out is not adata
    pred = out.layers[Key.layers.pred('staged')]
    assert pred.shape == (n, 6) and pred.dtype == np.float32
    for key in (Key.obsm.incoming('staged'), Key.obsm.outgoing('staged')):
        block = out.obsm[key]
        assert isinstance(block, pd.DataFrame) and block.shape == (n, L)
        assert list(block.columns) == ['L0^R0', 'L1^R1']
        assert (block.to_numpy() >= 0).all() and np.isfinite(block.to_numpy()).all()
    graph = out.obsp[Key.obsp.signalling('staged')]
    assert sparse.issparse(graph) and graph.shape == (n, n)
    assert graph.nnz == T * traj.data['cell', 'near', 'cell'].num_edges
    # only rows of the same time are linked
    i, j = graph.nonzero()
    times = adata.obs['time'].to_numpy()
    assert (times[i] == times[j]).all()
    # per row, incoming summed over pairs = what the graph sends to it, and so on
    incoming = out.obsm['staged_incoming'].to_numpy().sum(1)
    outgoing = out.obsm['staged_outgoing'].to_numpy().sum(1)
    np.testing.assert_allclose(np.asarray(graph.sum(0)).ravel(), incoming, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(graph.sum(1)).ravel(), outgoing, rtol=1e-4)
    results = out.uns['staged']
    assert set(results) == {'intracellular', 'intercellular', 'lr_pairs', 'params'}
    intra, inter = interaction_tables(model, traj.data, traj.X_graph)
    pd.testing.assert_frame_equal(results['intracellular'], intra)
    pd.testing.assert_frame_equal(results['intercellular'], inter)
    params = results['params']
    assert params['method'] == 'jacobian'
    assert params['signalling_orientation'] == 'sender_rows_receiver_columns'
    assert json.loads(params['model_config']) == json.loads(json.dumps(model.config))


def test_prediction_is_the_model_integrated_from_the_first_state(fitted):
    adata, traj, model = fitted
    out = write_results(adata, model, traj)
    with torch.no_grad():
        expected = traj.data.cells_to_input(model(traj.data, traj.t, traj.X_graph[0]),
                                            dim=1).numpy()
    cell = pd.Index(traj.cell_ids).get_indexer(adata.obs['cell_id'])
    time = np.searchsorted(traj.t.numpy(), adata.obs['time'].to_numpy())
    np.testing.assert_allclose(out.layers['staged_pred'], expected[time, cell], rtol=1e-5)
    first = adata.obs['time'].to_numpy() == 0.0
    np.testing.assert_allclose(out.layers['staged_pred'][first], adata.X[first],
                               rtol=1e-5)


def test_inplace_key_added_method_and_gene_subset(long_adata):
    adata, _ = long_adata
    traj = read_trajectories(adata, genes=['R0', 'L0', 'G1'], lr_pairs=LR_PAIRS[:1], k=3)
    model = _model(3)
    assert write_results(adata, model, traj, key_added='run1', method='attention',
                         inplace=True) is None
    assert {'run1_pred'} <= set(adata.layers) and 'run1' in adata.uns
    assert adata.uns['run1']['params']['method'] == 'attention'
    pred = adata.layers['run1_pred']
    columns = [list(adata.var_names).index(g) for g in ('R0', 'L0', 'G1')]
    assert np.isfinite(pred[:, columns]).all()
    assert np.isnan(np.delete(pred, columns, axis=1)).all()
    assert adata.obsm['run1_incoming'].shape == (adata.n_obs, 1)


def test_results_round_trip_through_h5ad(fitted, tmp_path):
    adata, traj, model = fitted
    out = write_results(adata, model, traj)
    path = tmp_path / 'results.h5ad'
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers['staged_pred'], out.layers['staged_pred'])
    for key in ('staged_incoming', 'staged_outgoing'):
        pd.testing.assert_frame_equal(back.obsm[key], out.obsm[key])
    assert (back.obsp['staged_signalling'] != out.obsp['staged_signalling']).nnz == 0
    for key in ('intracellular', 'intercellular', 'lr_pairs'):
        pd.testing.assert_frame_equal(back.uns['staged'][key], out.uns['staged'][key],
                                      check_dtype=False, check_categorical=False)
    params, saved = out.uns['staged']['params'], back.uns['staged']['params']
    assert set(params) == set(saved)
    assert saved['model_config'] == params['model_config']
    np.testing.assert_array_equal(saved['times'], params['times'])
    # the read-back AnnData is still valid input
    again = read_trajectories(back, lr_pairs=LR_PAIRS, k=3)
    torch.testing.assert_close(again.X, traj.X)


def test_cell_autonomous_model_writes_zero_signalling(fitted, tmp_path):
    adata, traj, _ = fitted
    model = _model(signalling=False)
    out = write_results(adata, model, traj)
    assert out.obsp['staged_signalling'].nnz == 0
    assert (out.obsm['staged_incoming'].to_numpy() == 0).all()
    assert len(out.uns['staged']['intercellular']) == 0
    out.write_h5ad(tmp_path / 'autonomous.h5ad')
    assert ad.read_h5ad(tmp_path / 'autonomous.h5ad').obsm['staged_incoming'].shape \
        == (adata.n_obs, 2)


def test_fit_then_write_and_unmatched_rows(fitted):
    from torch_staged.train import fit
    adata, traj, model = fitted
    result = fit(model, traj.data, epochs=2, holdout=None, progress=False)
    assert len(result.history) == 2
    extra = adata[:3].copy()
    extra.obs['time'] = 9.0  # a time the model never saw
    extra.obs_names = ['x0', 'x1', 'x2']
    both = ad.concat([adata, extra])
    with pytest.warns(UserWarning, match='3 of 83 rows of adata match no'):
        out = write_results(both, model, traj)
    assert np.isnan(out.layers['staged_pred'][-3:]).all()
    assert np.isfinite(out.layers['staged_pred'][:-3]).all()
    assert out.obsp['staged_signalling'][-3:].nnz == 0


def test_ensemble_writes_the_members_means(fitted, unchanged, tmp_path):
    adata, traj, model = fitted
    torch.manual_seed(1)
    other = perturb_parameters(STAGED(6, 3, hidden_channels=4, mlp_channels=8,
                                      method='rk4', options={'step_size': 0.25}))
    singles = [write_results(adata, m, traj) for m in (model, other)]
    with unchanged(adata):
        out = write_results(adata, [model, other], traj)
    pred = Key.layers.pred('staged')
    np.testing.assert_allclose(out.layers[pred],
                               (singles[0].layers[pred] + singles[1].layers[pred]) / 2,
                               rtol=1e-5, atol=1e-6)
    for key in (Key.obsm.incoming('staged'), Key.obsm.outgoing('staged')):
        mean = (singles[0].obsm[key].to_numpy() + singles[1].obsm[key].to_numpy()) / 2
        np.testing.assert_allclose(out.obsm[key].to_numpy(), mean, rtol=1e-5, atol=1e-7)
    key = Key.obsp.signalling('staged')
    mean = (singles[0].obsp[key] + singles[1].obsp[key]) / 2
    np.testing.assert_allclose(out.obsp[key].toarray(), mean.toarray(), rtol=1e-5,
                               atol=1e-7)
    intra = out.uns['staged'][Key.uns.intracellular]
    assert 'abs_score_sd' in intra.columns and (intra['abs_score_sd'] > 0).any()
    assert out.uns['staged'][Key.uns.params]['ensemble_size'] == 2
    assert singles[0].uns['staged'][Key.uns.params]['ensemble_size'] == 1
    assert not np.allclose(singles[0].layers[pred], singles[1].layers[pred],
                           equal_nan=True)  # the members differ
    with pytest.raises(ValueError, match='empty sequence'):
        write_results(adata, [], traj)
    with pytest.raises(ValueError, match='Model 1 of the ensemble: The gene panel'):
        write_results(adata, [model, _model(5)], traj)
    out.write_h5ad(tmp_path / 'ensemble.h5ad')
    back = ad.read_h5ad(tmp_path / 'ensemble.h5ad')
    pd.testing.assert_frame_equal(back.uns['staged'][Key.uns.intracellular], intra,
                                  check_dtype=False, check_index_type=False)
