"""Sections in their own coordinate frames: alignment and trajectories."""
import copy

import numpy as np
import pandas as pd
import pytest

from torch_staged.sim import simulate_tissue
from torch_staged.trajectory import align_sections, infer_trajectories


def moved_tissue(fraction=1.0, seed=0, mirror=True):
    """Simulated snapshots, one section per time, every later section rotated,
    (mirrored) and shifted; returns the moved AnnData and the true maps."""
    adata = simulate_tissue(120, num_genes=10, num_pairs=2, num_decoy_pairs=1,
                            snapshot=fraction < 1, snapshot_fraction=fraction,
                            times=[0.0, 0.5, 1.0], seed=seed)
    times = adata.obs['time'].to_numpy()
    pos = np.asarray(adata.obsm['spatial'], dtype=np.float64).copy()
    maps = {}
    for k, t in enumerate(np.unique(times)):
        angle = 0.0 if k == 0 else 0.7 + k
        A = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        if mirror and k == 1:
            A = A @ np.diag([1.0, -1.0])
        c = np.zeros(2) if k == 0 else np.array([30.0 * k, -12.0])
        rows = times == t
        pos[rows] = pos[rows] @ A.T + c
        maps[f'day{k}'] = (A, c)
    adata.obsm['spatial'] = pos
    adata.obs['section'] = pd.Categorical([f'day{k}' for k in
                                           np.unique(times, return_inverse=True)[1]])
    return adata, maps


def test_align_sections_recovers_rotation_mirroring_and_shift():
    adata, maps = moved_tissue()
    before = copy.deepcopy(adata)
    out = align_sections(adata, 'section', num_samples=120)
    np.testing.assert_array_equal(adata.obsm['spatial'], before.obsm['spatial'])
    assert 'spatial_aligned' not in adata.obsm
    table = out.uns['staged_alignment']
    assert list(table.index) == ['day0', 'day1', 'day2']
    assert table['mirrored'].tolist() == [False, True, False]
    true = np.asarray(simulate_tissue(120, num_genes=10, num_pairs=2, num_decoy_pairs=1,
                                      times=[0.0, 0.5, 1.0], seed=0).obsm['spatial'])
    error = np.sqrt(((out.obsm['spatial_aligned'] - true) ** 2).sum(1)).max()
    assert error < 0.05  # every cell observed at every time: exact recovery


def test_alignment_alone_leaves_the_expression_trajectories():
    # the spatial term is off by default: aligning changes the aligned
    # coordinates, not the trajectories; alpha_spatial='auto' turns it on
    adata, _ = moved_tissue(fraction=0.5)
    plain = infer_trajectories(adata, cell_key='cell_id', library_key='section')
    aligned = infer_trajectories(adata, cell_key='cell_id', library_key='section',
                                 align='rigid', align_samples=60)
    assert aligned.uns['staged_trajectories']['alpha_spatial'] == 0.0
    np.testing.assert_array_equal(aligned.X, plain.X)
    assert aligned.uns['staged_trajectories']['alignment'].loc['day1', 'mirrored']
    auto = infer_trajectories(adata, cell_key='cell_id', library_key='section',
                              align='rigid', align_samples=60, alpha_spatial='auto')
    assert auto.uns['staged_trajectories']['alpha_spatial'] > 0.0
    assert not np.array_equal(auto.X, plain.X)

def test_infer_with_sections_and_alignment():
    adata, _ = moved_tissue(fraction=0.5)
    adata.obs_names = [f'bc{i}' for i in range(adata.n_obs)]
    before = copy.deepcopy(adata)
    out = infer_trajectories(adata, cell_key='cell_id', library_key='section',
                             align='rigid', align_samples=60)
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    params = out.uns['staged_trajectories']
    anchors = int((adata.obs['time'] == 0).sum())
    assert out.n_obs == 3 * anchors
    assert set(out.obs['section']) == {'day0'}  # anchors keep their section
    assert out.obsm['spatial_aligned'].shape == (out.n_obs, 2)
    matches = params['matches']
    assert list(matches.index) == list(adata.obs_names)
    assert (matches['anchor'] >= 0).all()
    assert (matches.loc[adata.obs['time'].to_numpy() == 0, 'weight'] == 1).all()
    assert params['alignment'].loc['day1', 'mirrored']
    assert 0.0 <= params['spatial_information'] <= 1.0


@pytest.mark.parametrize('kwargs, match', [
    (dict(align='similarity'), "'align' must be one of"),
    (dict(align='rigid', structure_weight=1.0), "'structure_weight' must be in"),
    (dict(align='rigid', align_samples=2), "'align_samples' must be an integer"),
    (dict(library_key='slide'), "no column 'slide'"),
])
def test_bad_section_settings(kwargs, match):
    adata, _ = moved_tissue(fraction=0.5)
    with pytest.raises(ValueError, match=match):
        infer_trajectories(adata, cell_key='cell_id', **kwargs)
