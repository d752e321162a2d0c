"""write_results onto the user's own snapshot AnnData: every input row (every
cell of every section at every time) gets its results under its own name."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from torch_staged.io import read_trajectories, write_results
from torch_staged.models import STAGED
from torch_staged.sim import simulate_tissue
from torch_staged.testing import perturb_parameters
from torch_staged.trajectory import infer_trajectories


def three_by_three(seed=0):
    """Simulated snapshots at 3 times, the cells of every time split into 3
    sections, each moved by its own rotation (+ mirroring) and shift; the
    user's own obs names, an extra obs column, obsm, layers and an obsp graph.
    """
    adata = simulate_tissue(150, num_genes=12, num_pairs=2, num_decoy_pairs=1,
                            snapshot=True, times=[0.0, 1.0, 2.0], seed=seed)
    rng = np.random.default_rng(seed)
    pos = np.asarray(adata.obsm['spatial'], dtype=np.float64).copy()
    section = np.empty(adata.n_obs, dtype=object)
    times = adata.obs['time'].to_numpy()
    for k, t in enumerate(np.unique(times)):
        rows = np.flatnonzero(times == t)
        split = np.arange(rows.size) % 3
        for r in range(3):
            part = rows[split == r]
            angle = rng.uniform(0, 2 * np.pi)
            rot = np.array([[np.cos(angle), -np.sin(angle)],
                            [np.sin(angle), np.cos(angle)]]) @ np.diag([1.0, -1.0])
            pos[part] = pos[part] @ rot.T + rng.uniform(-20, 20, 2)
            section[part] = f'slide{k}{"abc"[r]}'
    adata.obsm['spatial'] = pos
    adata.obs['section'] = pd.Categorical(section.astype(str))
    adata.obs['batch_note'] = 'user column'
    adata.obs_names = [f'BARCODE-{i:04d}' for i in range(adata.n_obs)]
    adata.obsm['X_umap'] = rng.normal(size=(adata.n_obs, 2))
    adata.obsp['spatial_connectivities'] = sparse.random(
        adata.n_obs, adata.n_obs, density=0.01, random_state=seed, format='csr')
    return adata


@pytest.fixture(scope='module')
def snapshot_fit():
    adata = three_by_three()
    long = infer_trajectories(adata, cell_key='cell_id', library_key='section',
                              align='rigid', align_samples=40)
    traj = read_trajectories(long, library_key='section',
                             lr_pairs=adata.uns['lr_pairs'], k=4)
    torch.manual_seed(0)
    model = STAGED(traj.num_genes, len(traj.cell_types), hidden_channels=4,
                   mlp_channels=8, method='rk4', options={'step_size': 0.5})
    perturb_parameters(model)  # unequal strengths, as a fitted model's
    return adata, long, traj, model


def test_every_input_row_gets_its_results_under_its_own_name(snapshot_fit):
    adata, long, traj, model = snapshot_fit
    before = copy.deepcopy(adata)
    out = write_results(adata, model, traj)
    # the user's data is untouched, and the result keeps every row and slot
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    assert out.n_obs == adata.n_obs == 225
    assert list(out.obs_names) == list(adata.obs_names)
    pd.testing.assert_frame_equal(out.obs, before.obs)
    for key in before.obsm.keys():
        np.testing.assert_array_equal(np.asarray(out.obsm[key]), before.obsm[key])
    assert (out.obsp['spatial_connectivities']
            != before.obsp['spatial_connectivities']).nnz == 0
    np.testing.assert_array_equal(out.layers['truth'], before.layers['truth'])
    # every row of every section at every time has a prediction and scores
    pred = out.layers['staged_pred']
    assert np.isfinite(pred).all()
    assert np.isfinite(out.obsm['staged_incoming'].to_numpy()).all()
    assert out.obsp['staged_signalling'].nnz > 0
    sections_with_links = set(out.obs['section'].iloc[
        np.unique(out.obsp['staged_signalling'].nonzero()[0])])
    assert len(sections_with_links) == 9
    # and the matching is recorded per row
    matches = out.uns['staged']['matches']
    assert list(matches.index) == list(adata.obs_names)
    assert (matches['anchor'] >= 0).all() and (matches['weight'] > 0).all()


def test_a_row_gets_the_prediction_of_its_matched_anchor(snapshot_fit):
    adata, long, traj, model = snapshot_fit
    out = write_results(adata, model, traj)
    with torch.no_grad():
        full = traj.data.cells_to_input(
            model(traj.data, traj.t, traj.X_graph[0]), dim=1).numpy()
    matches = out.uns['staged']['matches']
    lookup = {cell: i for i, cell in enumerate(traj.cell_ids)}
    for name in ['BARCODE-0000', 'BARCODE-0100', 'BARCODE-0224']:
        row = matches.loc[name]
        k = int(np.flatnonzero(traj.t.numpy() == row['time'])[0])
        i = lookup[(row['anchor_library'], row['anchor_cell'])]
        np.testing.assert_allclose(out[name].layers['staged_pred'][0], full[k, i],
                                   rtol=1e-5)
    # first-time rows are the anchors themselves
    first = adata.obs['time'] == 0.0
    assert (matches.loc[first.to_numpy(), 'weight'] == 1.0).all()


def test_the_long_format_output_still_works(snapshot_fit):
    adata, long, traj, model = snapshot_fit
    out = write_results(long, model, traj)
    assert np.isfinite(out.layers['staged_pred']).all()
    assert 'matches' not in out.uns['staged']


def test_results_and_matches_round_trip_through_h5ad(snapshot_fit, tmp_path):
    import anndata as ad
    adata, long, traj, model = snapshot_fit
    long.write_h5ad(tmp_path / 'long.h5ad')
    again = read_trajectories(ad.read_h5ad(tmp_path / 'long.h5ad'),
                              library_key='section', lr_pairs=adata.uns['lr_pairs'],
                              k=4)
    pd.testing.assert_frame_equal(again.matches, traj.matches, check_dtype=False)
    out = write_results(adata, model, again)
    out.write_h5ad(tmp_path / 'out.h5ad')
    back = ad.read_h5ad(tmp_path / 'out.h5ad')
    np.testing.assert_array_equal(back.layers['staged_pred'], out.layers['staged_pred'])
    assert list(back.uns['staged']['matches'].index) == list(adata.obs_names)
