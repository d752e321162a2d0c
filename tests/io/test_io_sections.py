"""Several tissue sections (a scverse ``library_key``): one block-diagonal graph
whose fit is the sum of the sections' fits."""
import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from torch_staged.data import tile
from torch_staged.io import read_trajectories, write_results
from torch_staged.models import STAGED
from torch_staged.train import fit
from torch_staged.typing import CELL, NEAR, SIGNALS

LR_PAIRS = pd.DataFrame({'ligand': ['L0', 'L1'], 'receptor': ['R0', 'R1']})


def two_sections(make_long):
    """Two sections of 16 and 20 cells with the **same** cell ids and overlapping
    coordinates, each observed at the same 4 times."""
    first, _ = make_long(num_cells=16, seed=1, ids=[f'c{i}' for i in range(16)])
    second, _ = make_long(num_cells=20, seed=2, ids=[f'c{i}' for i in range(20)])
    first.obs['section'] = 'A'
    second.obs['section'] = 'B'
    second.obs_names = [f'b{n}' for n in second.obs_names]
    return ad.concat([first, second], merge='same'), first, second


def _model():
    torch.manual_seed(0)
    return STAGED(6, 3, hidden_channels=4, mlp_channels=8, method='rk4',
                  options={'step_size': 0.25})


def sum_mse(pred, target):
    return F.mse_loss(pred, target, reduction='sum')


def test_library_key_gives_a_block_diagonal_graph(make_long):
    both, first, second = two_sections(make_long)
    traj = read_trajectories(both, library_key='section', lr_pairs=LR_PAIRS, k=3)
    assert traj.num_cells == 36 and traj.libraries == ['A', 'B']
    assert traj.num_sections == 2
    section = traj.data[CELL].batch
    src, dst = traj.data[NEAR].edge_index
    assert int((section[src] != section[dst]).sum()) == 0
    G = traj.num_genes
    s_src, s_dst = traj.data[SIGNALS].edge_index // G
    assert int((section[s_src] != section[s_dst]).sum()) == 0
    # the same edge counts as the two sections read one by one
    one = read_trajectories(first, lr_pairs=LR_PAIRS, k=3)
    two = read_trajectories(second, lr_pairs=LR_PAIRS, k=3)
    for rel, count in traj.data.edge_counts().items():
        assert count == one.data.edge_counts()[rel] + two.data.edge_counts()[rel]
    # ids repeat across sections: a cell is the pair (section, id)
    assert traj.cell_ids[0] == ('A', 'c0') and traj.cell_ids[16] == ('B', 'c0')
    assert traj.cell_library.tolist() == [0] * 16 + [1] * 20
    assert 'sections=2' in repr(traj)


def test_two_section_loss_and_gradients_are_the_sum_of_the_sections(make_long):
    both, first, second = two_sections(make_long)
    traj = read_trajectories(both, library_key='section', lr_pairs=LR_PAIRS, k=3)
    parts = [read_trajectories(a, lr_pairs=LR_PAIRS, k=3) for a in (first, second)]

    def loss_and_grads(tr):
        model = _model()
        X = tr.X_graph
        pred = model(tr.data, tr.t, X[0])
        loss = sum_mse(pred[1:], X[1:])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()
                 if p.grad is not None}
        return float(loss.detach()), grads, tr.data.cells_to_input(pred.detach(), dim=1)

    loss, grads, pred = loss_and_grads(traj)
    loss_a, grads_a, pred_a = loss_and_grads(parts[0])
    loss_b, grads_b, pred_b = loss_and_grads(parts[1])
    assert loss == pytest.approx(loss_a + loss_b, rel=1e-5)
    assert loss_a > 0 and loss_b > 0
    torch.testing.assert_close(pred, torch.cat([pred_a, pred_b], dim=1))
    assert sorted(grads) == sorted(grads_a)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_a[name] + grads_b[name], rtol=1e-4,
                                   atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in grads.values())


def test_two_section_fit_loss_is_the_sum_of_the_sections(make_long):
    both, first, second = two_sections(make_long)
    traj = read_trajectories(both, library_key='section', lr_pairs=LR_PAIRS, k=3)
    parts = [read_trajectories(a, lr_pairs=LR_PAIRS, k=3) for a in (first, second)]
    # unweighted genes: the 'rate' weights of one fit pool all its sections
    options = dict(loss='rollout', epochs=1, holdout=None, loss_fn=sum_mse,
                   clip_grad=None, scheduler=None, progress=False, gene_weights=None)
    losses = [fit(_model(), tr.data, **options).history[0]['train_loss']
              for tr in [traj] + parts]
    assert losses[0] == pytest.approx(losses[1] + losses[2], rel=1e-5)


def test_sections_are_tiled_separately(make_long):
    both, _, _ = two_sections(make_long)
    traj = read_trajectories(both, library_key='section', lr_pairs=LR_PAIRS, k=3)
    tiles = tile(traj.data, tile_size=100.0)  # one square covers both frames
    assert len(tiles) == 2
    section = traj.data[CELL].batch
    for sub in tiles:
        owners = section[sub[CELL].parent_id[sub[CELL].interior]]
        assert owners.unique().numel() == 1


def test_write_results_with_sections_maps_every_row(make_long):
    both, _, _ = two_sections(make_long)
    traj = read_trajectories(both, library_key='section', lr_pairs=LR_PAIRS, k=3)
    model = _model()
    before = copy.deepcopy(both)
    out = write_results(both, model, traj)
    pd.testing.assert_frame_equal(both.obs, before.obs)
    pred = out.layers['staged_pred']
    assert np.isfinite(pred).all()
    # a row of section B with id c0 gets section B's cell, not section A's
    with torch.no_grad():
        full = traj.data.cells_to_input(model(traj.data, traj.t, traj.X_graph[0]), dim=1)
    row = np.flatnonzero((both.obs['section'] == 'B') & (both.obs['cell_id'] == 'c0')
                         & (both.obs['time'] == 1.0))[0]
    np.testing.assert_allclose(pred[row], full[2, 16].numpy(), rtol=1e-5)
    assert out.uns['staged']['params']['library_key'] == 'section'


def test_library_key_errors(make_long):
    both, _, _ = two_sections(make_long)
    with pytest.raises(ValueError, match="no column 'slide'.*library_key"):
        read_trajectories(both, library_key='slide', lr_pairs=LR_PAIRS, k=3)
    with pytest.raises(ValueError, match=r"section 'A' \(obs\['section'\]\) has 16 cells"):
        read_trajectories(both, library_key='section', lr_pairs=LR_PAIRS, k=16)
    bad = both.copy()
    bad.obs['section'] = bad.obs['section'].astype(object)
    bad.obs.iloc[0, bad.obs.columns.get_loc('section')] = None
    with pytest.raises(ValueError, match="'section'.*empty"):
        read_trajectories(bad, library_key='section', lr_pairs=LR_PAIRS, k=3)


def test_unused_type_category_is_not_a_cell_type(long_adata):
    adata, _ = long_adata
    adata = adata.copy()
    adata.obs['cell_type'] = adata.obs['cell_type'].cat.add_categories(['ghost'])
    with pytest.warns(UserWarning, match=r"categories without any cell \['ghost'\]"):
        traj = read_trajectories(adata, lr_pairs=LR_PAIRS, k=3)
    assert traj.cell_types == ['A', 'B', 'C']
    kept = read_trajectories(adata, lr_pairs=LR_PAIRS, k=3,
                             cell_types=['A', 'B', 'C', 'ghost'])
    assert kept.cell_types == ['A', 'B', 'C', 'ghost']
