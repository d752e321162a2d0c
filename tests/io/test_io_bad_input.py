"""One test per bad input: a clear error before any long computation, naming the
problem and the fix, and the user's AnnData left exactly as it was.
"""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from torch_staged.io import read_trajectories, write_results
from torch_staged.models import STAGED
from torch_staged.trajectory import infer_trajectories

LR_PAIRS = pd.DataFrame({'ligand': ['L0', 'L1'], 'receptor': ['R0', 'R1']})


def _model(num_genes=6, num_types=3):
    torch.manual_seed(0)
    return STAGED(num_genes, num_types, hidden_channels=4, mlp_channels=8, method='rk4',
                  options={'step_size': 0.5})


def test_missing_spatial_coordinates(long_adata, unchanged):
    adata, _ = long_adata
    del adata.obsm['spatial']
    with unchanged(adata):
        with pytest.raises(ValueError, match=r"obsm has no 'spatial'.*adata.obsm"
                                             r"\['spatial'\] = array"):
            read_trajectories(adata)
        with pytest.raises(ValueError, match="obsm has no 'spatial'"):
            infer_trajectories(adata)
        with pytest.raises(ValueError, match="obsm has no 'xy'.*spatial_key='<key>'"):
            read_trajectories(adata, spatial_key='xy')


@pytest.mark.parametrize('arg, key', [('cell_key', 'barcode'), ('time_key', 'day'),
                                      ('type_key', 'cluster')])
def test_missing_obs_keys(long_adata, unchanged, arg, key):
    adata, _ = long_adata
    with unchanged(adata):
        with pytest.raises(ValueError, match=rf"obs has no column '{key}'.*"
                                             rf"Pass {arg}='<column>'"):
            read_trajectories(adata, **{arg: key})
    with unchanged(adata):
        with pytest.raises(ValueError, match="Pass layer=None"):
            read_trajectories(adata, layer='raw')


@pytest.mark.parametrize('value, fmt', [(np.nan, 'dense'), (np.inf, 'dense'),
                                        (np.nan, 'sparse')])
def test_nan_or_inf_expression(make_long, unchanged, value, fmt):
    adata, _ = make_long(sparse_x=fmt == 'sparse')
    if fmt == 'sparse':
        adata.X.data[3] = value
    else:
        adata.X[5, 2] = value
    with unchanged(adata):
        with pytest.raises(ValueError, match=r"adata.X has 1 NaN or Inf.*impute or "
                                             r"drop"):
            read_trajectories(adata)
        with pytest.raises(ValueError, match="NaN or Inf"):
            infer_trajectories(adata)
    read_trajectories(adata, genes=['L0', 'G1'] if fmt == 'dense' else None,
                      layer='counts', k=3)  # other columns / layers are fine


def test_negative_counts(long_adata, unchanged):
    adata, _ = long_adata
    adata.layers['counts'][0, 0] = -2.0
    with unchanged(adata):
        with pytest.raises(ValueError, match=r"layers\['counts'\] has 1 negative "
                                             r".*allow_negative=True"):
            read_trajectories(adata, layer='counts')
        with pytest.raises(ValueError, match="negative"):
            infer_trajectories(adata, layer='counts')
        traj = read_trajectories(adata, layer='counts', allow_negative=True, k=3)
    assert float(traj.X.min()) == -2.0


def test_duplicated_cell_time_rows(long_adata, unchanged):
    adata, _ = long_adata
    doubled = ad.concat({'all': adata, 'again': adata[:2]}, index_unique='-')
    with unchanged(doubled):
        with pytest.raises(ValueError, match=r"2 \(cell, time\) pair\(s\) have more "
                                             r"than one row.*drop or aggregate"):
            read_trajectories(doubled)
        with pytest.raises(ValueError, match="more than one row"):
            infer_trajectories(doubled, cell_key='cell_id')


def test_fewer_than_two_time_points(long_adata, unchanged):
    adata, _ = long_adata
    single = adata[adata.obs['time'] == 0.5].copy()
    with unchanged(single):
        with pytest.raises(ValueError, match=r"1 distinct time point.*at least two"):
            read_trajectories(single)
        with pytest.raises(ValueError, match="at least two"):
            infer_trajectories(single)


def test_unknown_cell_type_at_predict_time(long_adata, unchanged):
    adata, _ = long_adata
    train = read_trajectories(adata[adata.obs['cell_type'] != 'C'].copy(), k=3)
    assert train.cell_types == ['A', 'B']
    model = _model(6, 2)
    with unchanged(adata):
        with pytest.raises(ValueError, match=r"cell type\(s\) \['C'\] that are not "
                                             r"among the known cell types.*drop these"):
            read_trajectories(adata, cell_types=train.cell_types)
        new = read_trajectories(adata, k=3)
        with pytest.raises(ValueError, match=r"Unknown cell type\(s\) \['C'\] at "
                                             r"predict time"):
            write_results(adata, model, new, model_cell_types=train.cell_types)
        with pytest.raises(ValueError, match=r"3 cell types.*num_cell_types=2"):
            write_results(adata, model, new)


def test_gene_panel_differs_from_the_model(long_adata, unchanged):
    adata, _ = long_adata
    model_genes = ['L0', 'L1', 'R0', 'R1', 'G0', 'G7']
    with unchanged(adata):
        with pytest.raises(ValueError, match=r"panel differs from adata.var_names: 1 "
                                             r"of the 6.*\['G7'\]"):
            read_trajectories(adata, genes=model_genes)
        traj = read_trajectories(adata, k=3)
        with pytest.raises(ValueError, match=r"differs from the model's: 1 model "
                                             r"gene.*\['G7'\].*genes=model_genes"):
            write_results(adata, _model(), traj, model_genes=model_genes)
        with pytest.raises(ValueError, match=r"has 6 genes but the model was built "
                                             r"for num_genes=5"):
            write_results(adata, _model(5), traj)


def test_empty_lr_table_after_mapping(long_adata, unchanged):
    adata, _ = long_adata
    human = pd.DataFrame({'ligand': ['TGFB1', 'l0'], 'receptor': ['TGFBR1_TGFBR2', 'r0']})
    with unchanged(adata):
        for missing in ('raise', 'drop'):
            with pytest.raises(ValueError, match=r"table is empty after mapping.*"
                                                 r"spelling and case.*lr_pairs=None"):
                read_trajectories(adata, lr_pairs=human, missing_genes=missing)


def test_snapshots_are_not_trajectories(long_adata, unchanged):
    adata, _ = long_adata
    snapshot = adata[3:].copy()
    with unchanged(snapshot):
        with pytest.raises(ValueError, match=r"observed at every time.*"
                                             r"infer_trajectories"):
            read_trajectories(snapshot)


def test_cells_that_move_or_change_type(long_adata, unchanged):
    adata, _ = long_adata
    moved = adata.copy()
    moved.obsm['spatial'][7] += 1.0
    retyped = adata.copy()
    retyped.obs['cell_type'] = retyped.obs['cell_type'].astype(str)
    retyped.obs.iloc[4, 2] = 'A' if retyped.obs.iloc[4, 2] != 'A' else 'B'
    with unchanged(moved), unchanged(retyped):
        with pytest.raises(ValueError, match=r"1 cell\(s\) have a different position"
                                             r".*do not move"):
            read_trajectories(moved)
        with pytest.raises(ValueError, match=r"1 cell\(s\) have a different cell type"):
            read_trajectories(retyped)


def test_missing_neighbour_graph(long_adata, unchanged):
    adata, _ = long_adata
    with unchanged(adata):
        with pytest.raises(ValueError, match=r"needs adata.obsp\['spatial_connectivities"
                                             r"'\].*squidpy.gr.spatial_neighbors"):
            read_trajectories(adata, neighbors='obsp')
        with pytest.raises(ValueError, match="over the rows"):
            read_trajectories(adata, neighbors=sparse.eye(7, format='csr'))
