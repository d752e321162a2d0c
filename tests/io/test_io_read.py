import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from scipy.spatial import cKDTree

from torch_staged.data import build_tissue_graph
from torch_staged.io import Key, Trajectories, read_trajectories
from torch_staged.typing import CELL, GENE, NEAR

GENES = ['L0', 'L1', 'R0', 'R1', 'G0', 'G1']
LR_PAIRS = pd.DataFrame({'ligand': ['L0', 'L1'], 'receptor': ['R0', 'R1']})


def test_reads_long_format_into_trajectories(long_adata, unchanged):
    adata, truth = long_adata
    with unchanged(adata):
        traj = read_trajectories(adata, lr_pairs=LR_PAIRS, k=4)
    assert isinstance(traj, Trajectories)
    assert traj.X.shape == (4, 20, 6) and traj.X.dtype == torch.float32
    assert traj.t.tolist() == [0.0, 0.5, 1.0, 2.0]
    assert traj.cell_ids == sorted(truth['ids'].tolist())  # input order: sorted ids
    assert traj.genes == GENES
    assert traj.cell_types == ['A', 'B', 'C']
    torch.testing.assert_close(traj.X, torch.from_numpy(truth['X']).float())
    data = traj.data
    assert data.num_cells == 20 and data.num_genes == 6
    assert data[NEAR].num_edges == 20 * 4
    assert data.lr_pairs == [('L0', 'R0'), ('L1', 'R1')]
    # positions, types and the stored trajectories follow the graph's order
    n_id = data[CELL].n_id
    torch.testing.assert_close(data[CELL].pos, torch.from_numpy(truth['pos'][n_id]).float())
    names = np.asarray(traj.cell_types)[data[CELL].cell_type.numpy()]
    assert names.tolist() == truth['types'][n_id.numpy()].tolist()
    torch.testing.assert_close(data.trajectories(), traj.X_graph)
    torch.testing.assert_close(data[GENE].x.view(20, 6), traj.X_graph[0])
    assert repr(traj) == (
        "Trajectories(num_cells=20, num_times=4, num_genes=6, cell_types=['A', 'B', "
        "'C'], edges={'near': 80, 'regulates': 600, 'signals': 160})")


def test_dense_sparse_layer_and_row_order_agree(make_long):
    dense, _ = make_long(seed=1)
    sparse_x, _ = make_long(seed=1, sparse_x=True)
    ordered, _ = make_long(seed=1, shuffle=False)
    ref = read_trajectories(dense, k=3)
    for other in (read_trajectories(sparse_x, k=3), read_trajectories(ordered, k=3)):
        torch.testing.assert_close(other.X, ref.X)
        assert torch.equal(other.data[NEAR].edge_index, ref.data[NEAR].edge_index)
    counts = read_trajectories(sparse_x, layer='counts', k=3)
    torch.testing.assert_close(counts.X, torch.round(ref.X * 3))


def test_gene_subset_dtype_and_integer_ids(make_long):
    adata, truth = make_long(ids=np.arange(100, 120))
    traj = read_trajectories(adata, genes=['G1', 'L0'], dtype=torch.float64, k=3)
    assert traj.genes == ['G1', 'L0'] and traj.X.dtype == torch.float64
    assert traj.cell_ids == list(range(100, 120))
    torch.testing.assert_close(traj.X, torch.from_numpy(truth['X'][..., [5, 0]]
                                                        .astype(np.float32)).double())


def test_agrees_with_the_simulator_reader():
    from torch_staged.sim import graph_from_simulation, simulate_tissue
    adata = simulate_tissue(30, times=np.linspace(0, 1, 3), seed=0)
    data, X, t = graph_from_simulation(adata, k=5)
    traj = read_trajectories(adata, lr_pairs=adata.uns['lr_pairs'],
                             grn=adata.uns['grn_prior'], k=5)
    torch.testing.assert_close(traj.X, X)
    torch.testing.assert_close(traj.t, t)
    for key in (NEAR, ('gene', 'regulates', 'gene'), ('gene', 'signals', 'gene')):
        assert torch.equal(traj.data[key].edge_index, data[key].edge_index)


def _cell_knn(pos, k):
    _, idx = cKDTree(pos).query(pos, k + 1)
    return idx[:, 1:]


def _squidpy_like(adata, neighbours_of_cell, rows):
    """Connectivities / distances over rows as squidpy writes them (row i lists the
    neighbour rows j of i), for the rows in ``rows`` only.
    """
    cell_col = adata.obs['cell_id'].to_numpy()
    time_col = adata.obs['time'].to_numpy()
    lookup = {(c, t): r for r, (c, t) in enumerate(zip(cell_col, time_col))}
    ids = sorted(set(cell_col))
    src, dst = [], []
    for r in rows:
        c = ids.index(cell_col[r])
        for j in neighbours_of_cell[c]:
            src.append(r)
            dst.append(lookup[(ids[j], time_col[r])])
    pos = adata.obsm['spatial']
    dist = np.linalg.norm(pos[src] - pos[dst], axis=1)
    shape = (adata.n_obs, adata.n_obs)
    conn = sparse.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=shape)
    return conn, sparse.csr_matrix((dist, (src, dst)), shape=shape)


@pytest.mark.parametrize('which', ['first_time', 'all_rows', 'distances_only'])
def test_reads_a_squidpy_neighbour_graph(long_adata, unchanged, which):
    adata, truth = long_adata
    order = np.argsort(truth['ids'])  # input order = sorted ids
    pos = truth['pos'][order]
    knn = _cell_knn(pos, 3)
    first = np.flatnonzero(adata.obs['time'].to_numpy() == 0.0)
    rows = first if which == 'first_time' else np.arange(adata.n_obs)
    conn, dist = _squidpy_like(adata, knn, rows)
    adata.obsp[Key.obsp.distances] = dist
    if which != 'distances_only':
        adata.obsp[Key.obsp.connectivities] = conn
    with unchanged(adata):
        traj = read_trajectories(adata, neighbors='obsp', lr_pairs=LR_PAIRS)
    # cell i receives from its kNN j: edges j -> i
    edges = np.stack([knn.reshape(-1), np.repeat(np.arange(20), 3)])
    ref = build_tissue_graph(pos, truth['types'][order], GENES, LR_PAIRS,
                             neighbors=edges, cell_types=['A', 'B', 'C'])
    assert torch.equal(traj.data[NEAR].edge_index, ref[NEAR].edge_index)
    torch.testing.assert_close(traj.data[NEAR].edge_attr, ref[NEAR].edge_attr)
    assert torch.equal(traj.data[('gene', 'signals', 'gene')].edge_index,
                       ref[('gene', 'signals', 'gene')].edge_index)
    # the same graph given as a cell x cell matrix or a [2, E] array
    cells = sparse.csr_matrix((np.ones(edges.shape[1]), (edges[1], edges[0])),
                              shape=(20, 20))
    for given in (cells, edges):
        other = read_trajectories(adata, neighbors=given)
        assert torch.equal(other.data[NEAR].edge_index, ref[NEAR].edge_index)


def test_h5ad_round_trip(tmp_path, make_long):
    adata, _ = make_long(sparse_x=True)
    adata.obsp[Key.obsp.connectivities] = sparse.random(adata.n_obs, adata.n_obs,
                                                        density=0.05, random_state=0,
                                                        format='csr')
    path = tmp_path / 'long.h5ad'
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    one = read_trajectories(adata, neighbors='obsp', lr_pairs=LR_PAIRS)
    two = read_trajectories(back, neighbors='obsp', lr_pairs=LR_PAIRS)
    torch.testing.assert_close(one.X, two.X)
    assert one.cell_ids == two.cell_ids and one.cell_types == two.cell_types
    assert torch.equal(one.data[NEAR].edge_index, two.data[NEAR].edge_index)


def test_priors_are_read_with_aliases_and_complexes(make_long):
    adata, _ = make_long()
    table = pd.DataFrame({'source': ['L0', 'L1'], 'target': ['R0_R1', 'R1']})
    grn = pd.DataFrame({'regulator': ['R0', 'R1', 'G0'], 'gene': ['G0', 'G1', 'L0'],
                        'cell_type': ['A', '', None]})
    traj = read_trajectories(adata, lr_pairs=table, grn=grn, k=3)
    assert traj.data.lr_pairs == [('L0', 'R0'), ('L0', 'R1'), ('L1', 'R1')]
    # type A: three edges, types B and C: the two untyped ones
    per_cell = np.bincount(traj.data['gene', 'regulates', 'gene'].edge_index[1]
                           .numpy() // 6, minlength=20)
    codes = traj.data[CELL].cell_type.numpy()
    assert set(per_cell[codes == 0]) == {3} and set(per_cell[codes != 0]) == {2}
