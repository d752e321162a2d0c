"""Long-format AnnData -> trajectories and the tissue graph."""
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from torch import Tensor

from torch_staged.data import TissueData, build_tissue_graph
from torch_staged.io._constants import Key
from torch_staged.io._priors import read_grn, read_lr_pairs
from torch_staged.io._validate import (
    check_anndata,
    check_constant_per_cell,
    check_expression,
    check_gene_panel,
    check_known_types,
    check_missing_option,
    check_obs_key,
    check_spatial,
    check_two_times,
    check_unique_rows,
    expression_matrix,
    numeric_times,
)
from torch_staged.typing import ArrayLike, PairTable

#: Neighbourhood rules computed by the builder.
RULES = ('knn', 'radius', 'delaunay')
#: Value of ``neighbors`` that reads the scverse graph in ``adata.obsp``.
OBSP = 'obsp'


@dataclass(repr=False)
class Trajectories:
    r"""Expression trajectories of a tissue and its graph, as returned by
    :func:`read_trajectories`.

    Attributes:
        data (TissueData): The tissue graph (cells in the builder's graph order,
            with ``data['gene'].x`` = the first observed state and the
            trajectories stored by :meth:`TissueData.set_trajectories`), ready
            for :func:`torch_staged.train.fit`.
        X (Tensor): ``[T, N, G]`` expression in the builder's **input** cell
            order, i.e. the order of :attr:`cell_ids` (use
            ``data.cells_to_graph(X, dim=1)`` for the graph's order).
        t (Tensor): ``[T]`` strictly increasing observation times.
        cell_ids (list): The :math:`N` cell ids (sorted unique values of
            ``obs[cell_key]``).
        genes (list of str): The :math:`G` genes of the panel, in column order.
        cell_types (list of str): Cell-type names in code order
            (``data['cell'].cell_type`` indexes this list).
        cell_key (str): The ``obs`` column of the cell ids.
        time_key (str): The ``obs`` column of the times.
        type_key (str): The ``obs`` column of the cell types.
    """

    data: TissueData
    X: Tensor
    t: Tensor
    cell_ids: List[Any]
    genes: List[str]
    cell_types: List[str]
    cell_key: str = Key.obs.cell
    time_key: str = Key.obs.time
    type_key: str = Key.obs.cell_type

    @property
    def num_cells(self) -> int:
        """The number of cells :math:`N`."""
        return int(self.X.size(1))

    @property
    def num_times(self) -> int:
        """The number of time points :math:`T`."""
        return int(self.t.numel())

    @property
    def num_genes(self) -> int:
        """The size :math:`G` of the gene panel."""
        return len(self.genes)

    @property
    def X_graph(self) -> Tensor:
        """``[T, N, G]`` expression in the graph's cell order (for the model)."""
        return self.data.cells_to_graph(self.X, dim=1)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_cells={self.num_cells}, '
                f'num_times={self.num_times}, num_genes={self.num_genes}, '
                f'cell_types={self.cell_types}, '
                f'edges={self.data.edge_counts()})')


def _factorize_cells(column: pd.Series, cell_key: str):
    values = column.to_numpy()
    if isinstance(column.dtype, pd.CategoricalDtype):
        values = column.astype(column.cat.categories.dtype).to_numpy()
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:
        raise ValueError(f"adata.obs[{cell_key!r}] mixes types that cannot be sorted "
                         f"(e.g. numbers and strings): make the ids one type"
                         ) from None
    return codes.astype(np.int64), list(uniques.tolist() if hasattr(uniques, 'tolist')
                                        else uniques)


def _graph_from_matrix(matrix, cell: np.ndarray, num_cells: int, what: str
                       ) -> np.ndarray:
    """``[2, E]`` (source, target) cell edges from a neighbour matrix over rows
    (``[n_obs, n_obs]``) or over cells (``[N, N]``): row ``i`` lists the
    neighbours ``j`` of ``i``, so each stored entry is an edge ``j -> i``.
    """
    shape = tuple(matrix.shape)
    if shape == (cell.size, cell.size):
        owner = cell
    elif shape == (num_cells, num_cells):
        owner = np.arange(num_cells)
    else:
        raise ValueError(
            f"{what} has shape {list(shape)}, but a neighbour graph must be over "
            f"the rows [{cell.size}, {cell.size}] or over the cells "
            f"[{num_cells}, {num_cells}]")
    coo = sparse.coo_matrix(matrix)
    keep = coo.data != 0
    dst, src = owner[coo.row[keep]], owner[coo.col[keep]]
    keep = src != dst  # a cell's own rows at other times are not neighbours
    key = np.unique(src[keep].astype(np.int64) * num_cells + dst[keep])
    if key.size == 0:
        raise ValueError(f"{what} has no edges between different cells")
    return np.stack([key // num_cells, key % num_cells])


def _neighbors(adata, neighbors, cell: np.ndarray, num_cells: int,
               connectivity_key: str):
    if isinstance(neighbors, str):
        if neighbors in RULES:
            return neighbors
        if neighbors != OBSP:
            raise ValueError(f"'neighbors' must be one of {RULES + (OBSP, )}, a "
                             f"neighbour matrix or a [2, E] edge array (got "
                             f"{neighbors!r})")
        key = connectivity_key
        if key not in adata.obsp:
            if key == Key.obsp.connectivities and Key.obsp.distances in adata.obsp:
                key = Key.obsp.distances
            else:
                raise ValueError(
                    f"neighbors='obsp' needs adata.obsp[{connectivity_key!r}] (as "
                    f"squidpy.gr.spatial_neighbors writes it), but adata.obsp has "
                    f"{list(adata.obsp.keys())}. Compute it first, pass "
                    f"connectivity_key='<key>', or use neighbors='knn'")
        return _graph_from_matrix(adata.obsp[key], cell, num_cells,
                                  f"adata.obsp[{key!r}]")
    if sparse.issparse(neighbors):
        return _graph_from_matrix(neighbors, cell, num_cells, "'neighbors'")
    array = neighbors.detach().cpu().numpy() if isinstance(neighbors, Tensor) \
        else np.asarray(neighbors)
    if array.ndim == 2 and array.shape[0] == array.shape[1] and array.shape[0] != 2:
        return _graph_from_matrix(array, cell, num_cells, "'neighbors'")
    return array  # a [2, E] array over cells; the builder checks it


def read_trajectories(
    adata,
    *,
    cell_key: str = Key.obs.cell,
    time_key: str = Key.obs.time,
    type_key: str = Key.obs.cell_type,
    spatial_key: str = Key.obsm.spatial,
    layer: Optional[str] = None,
    genes: Optional[Sequence[str]] = None,
    lr_pairs: Optional[PairTable] = None,
    grn: Optional[PairTable] = None,
    neighbors: Union[str, ArrayLike, sparse.spmatrix] = 'knn',
    connectivity_key: str = Key.obsp.connectivities,
    cell_types: Optional[Sequence[str]] = None,
    missing_genes: str = 'raise',
    allow_negative: bool = False,
    dtype: torch.dtype = torch.float32,
    **graph_kwargs,
) -> Trajectories:
    r"""Reads long-format AnnData (one row per cell and time) into trajectories
    :math:`X \in \mathbb{R}^{T \times N \times G}` and the tissue graph.

    Requirements, all checked before any heavy work (each failure raises a
    :class:`ValueError` saying how to fix it; :obj:`adata` is never modified):

    * ``obs[cell_key]``, ``obs[time_key]`` (numeric, at least two distinct
      values) and ``obs[type_key]`` exist and have no empty entries;
    * every cell is observed exactly once at every time (no duplicated
      (cell, time) rows, none missing; for snapshots with different cells at
      each time use :func:`torch_staged.trajectory.infer_trajectories` first);
    * a cell keeps its cell type and its position ``obsm[spatial_key]`` at every
      time (cells do not move);
    * the expression (``X`` or ``layers[layer]``, dense or sparse) is finite and,
      unless :obj:`allow_negative`, non-negative.

    **Neighbourhood.** ``'knn'``, ``'radius'`` or ``'delaunay'`` build one from
    the positions. ``neighbors='obsp'`` reads the scverse graph
    ``obsp[connectivity_key]`` (default ``'spatial_connectivities'``, falling
    back to ``'spatial_distances'``), as written by
    ``squidpy.gr.spatial_neighbors``: in long format it is a graph over
    **rows**; every stored entry ``(i, j)`` (row :math:`i` has neighbour row
    :math:`j`) becomes the cell edge ``cell(j) -> cell(i)``, edges between rows
    of the same cell are dropped and duplicates merged, so a graph computed on
    the rows of one time point or on all rows both work. A sparse matrix over
    rows ``[n_obs, n_obs]`` or over cells ``[N, N]`` (in :attr:`cell_ids`
    order), or a ``[2, E]`` array of (source, target) cell indices, may also be
    given. Edge distances are recomputed from the positions.

    **Priors.** :obj:`lr_pairs` and :obj:`grn` go through
    :func:`read_lr_pairs` / :func:`read_grn` (column aliases, heteromeric
    complexes) with this panel, so absent genes and an empty ligand ->
    receptor table are reported before the graph is built.

    Args:
        adata (anndata.AnnData): Long-format data.
        cell_key (str, optional): ``obs`` column of the cell ids.
            (default: :obj:`'cell_id'`)
        time_key (str, optional): ``obs`` column of the numeric times.
            (default: :obj:`'time'`)
        type_key (str, optional): ``obs`` column of the cell types.
            (default: :obj:`'cell_type'`)
        spatial_key (str, optional): ``obsm`` key of the positions ``[n_obs, 2
            or 3]``. (default: :obj:`'spatial'`)
        layer (str, optional): Read ``layers[layer]`` instead of ``X``.
            (default: :obj:`None`)
        genes (list of str, optional): The gene panel, a subset of
            ``var_names`` in the order to use (e.g. a trained model's genes).
            (default: :obj:`None`, all of ``var_names``)
        lr_pairs (DataFrame, path or list, optional): Ligand -> receptor pairs.
            (default: :obj:`None`, no signalling edges)
        grn (DataFrame, path or list, optional): Prior GRN.
            (default: :obj:`None`, all gene pairs)
        neighbors (str, matrix or array, optional): See above.
            (default: :obj:`'knn'`)
        connectivity_key (str, optional): ``obsp`` key read by
            ``neighbors='obsp'``. (default: :obj:`'spatial_connectivities'`)
        cell_types (list of str, optional): All cell-type names in code order,
            e.g. a trained model's (:attr:`Trajectories.cell_types`); an unknown
            label raises. (default: the categories of ``obs[type_key]`` when it
            is categorical, else the sorted labels)
        missing_genes (str, optional): Prior rows naming absent genes:
            ``'raise'``, ``'drop'`` (warn) or ``'ignore'``.
            (default: :obj:`'raise'`)
        allow_negative (bool, optional): Accept negative expression (centred or
            scaled data). (default: :obj:`False`)
        dtype (torch.dtype, optional): Floating dtype. (default:
            :obj:`torch.float32`)
        **graph_kwargs (optional): Further arguments of
            :func:`~torch_staged.data.build_tissue_graph` (``k``, ``radius``,
            ``max_distance``, ``autocrine``, ``reorder``).

    Returns:
        :class:`Trajectories` with the graph, ``X [T, N, G]`` (input cell order),
        ``t [T]``, the cell ids, genes and cell types.

    Example:
        >>> from torch_staged.io import read_trajectories
        >>> from torch_staged.sim import simulate_tissue
        >>> adata = simulate_tissue(60, seed=1)
        >>> traj = read_trajectories(adata, lr_pairs=adata.uns['lr_pairs'],
        ...                          grn=adata.uns['grn_prior'], k=6)
        >>> traj.X.shape, traj.data.num_cells
        (torch.Size([17, 60, 20]), 60)
    """
    # ---- validation: everything before any heavy work -------------------------
    check_anndata(adata)
    check_missing_option(missing_genes)
    bad_kwargs = sorted(set(graph_kwargs) - {'k', 'radius', 'max_distance', 'autocrine',
                                             'reorder'})
    if bad_kwargs:
        raise TypeError(f"read_trajectories() got unexpected keyword argument(s) "
                        f"{bad_kwargs}")
    cell_col = check_obs_key(adata, cell_key, 'cell_key', 'cell ids')
    time_col = check_obs_key(adata, time_key, 'time_key', 'observation times')
    type_col = check_obs_key(adata, type_key, 'type_key', 'cell types')
    pos_rows = check_spatial(adata, spatial_key)
    matrix = expression_matrix(adata, layer)
    panel, columns = check_gene_panel(adata, genes)
    row_times = numeric_times(time_col, time_key)
    check_two_times(row_times, time_key)

    cell, cell_ids = _factorize_cells(cell_col, cell_key)
    times, time = np.unique(row_times, return_inverse=True)
    time = time.reshape(-1).astype(np.int64)
    N, T = len(cell_ids), times.size
    seen = check_unique_rows(cell, time, N, cell_ids, times, cell_key, time_key)
    if (seen == 0).any():
        missing = np.flatnonzero(seen == 0)
        shown = [(cell_ids[k % N], float(times[k // N])) for k in missing[:5]]
        raise ValueError(
            f"Every cell must be observed at every time, but {missing.size} of the "
            f"{T} x {N} (time, cell) pairs have no row, e.g. ({cell_key}, "
            f"{time_key}) = {shown}. Spatial snapshots observe different cells at "
            f"each time: turn them into trajectories with "
            f"torch_staged.trajectory.infer_trajectories(adata, time_key=...) first")
    first = np.empty(N, dtype=np.int64)
    first[cell[::-1]] = np.arange(adata.n_obs)[::-1]  # first row of every cell
    type_labels = type_col.astype(str).to_numpy()
    check_constant_per_cell(
        type_labels, cell, first, cell_ids, f'cell type (obs[{type_key!r}])',
        "A cell keeps its type over time: fix the labels, or give such cells "
        "different ids")
    spread = float(np.ptp(pos_rows, axis=0).max()) if adata.n_obs > 1 else 0.0
    check_constant_per_cell(
        pos_rows, cell, first, cell_ids, f'position (obsm[{spatial_key!r}])',
        "torch_staged assumes cells do not move: give every row of a cell the same "
        "coordinates (e.g. those of its first observation)",
        atol=1e-6 * max(spread, 1.0))
    check_expression(matrix, columns,
                     'adata.X' if layer is None else f'adata.layers[{layer!r}]',
                     allow_negative)
    if cell_types is None:
        if isinstance(type_col.dtype, pd.CategoricalDtype):
            cell_types = [str(c) for c in type_col.cat.categories]
        else:
            cell_types = sorted(set(type_labels.tolist()))
    else:
        cell_types = [str(c) for c in cell_types]
        check_known_types(type_labels, cell_types, type_key)
    if lr_pairs is not None:
        lr_pairs = read_lr_pairs(lr_pairs, genes=panel, missing_genes=missing_genes)
    if grn is not None:
        grn = read_grn(grn, genes=panel, missing_genes=missing_genes)
        if 'cell_type' in grn.columns and not pd.api.types.is_numeric_dtype(
                grn['cell_type']):
            labels = grn['cell_type'].dropna().astype(str).str.strip()
            unknown = sorted(set(labels[labels != '']) - set(cell_types))
            if unknown:
                raise ValueError(
                    f"The GRN table names cell type(s) {unknown} that are not among "
                    f"the cell types {cell_types} of obs[{type_key!r}]: fix its "
                    f"'cell_type' column, or pass cell_types=[...] listing every type")
    edges = _neighbors(adata, neighbors, cell, N, connectivity_key)

    # ---- reshape ----------------------------------------------------------------
    values = matrix if columns is None else matrix[:, columns]
    values = values.toarray() if sparse.issparse(values) else np.asarray(values)
    X = np.empty((T * N, len(panel)), dtype=np.float64)
    X[time * N + cell] = values
    X_t = torch.from_numpy(X.reshape(T, N, len(panel))).to(dtype)
    t = torch.from_numpy(times).to(dtype)
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"Distinct times {times.tolist()} collapse in {dtype}: pass "
                         f"dtype=torch.float64")
    data = build_tissue_graph(
        pos_rows[first], type_labels[first], panel, lr_pairs=lr_pairs, grn=grn,
        neighbors=edges, cell_types=cell_types, missing_genes='raise', x=X_t[0],
        dtype=dtype, **graph_kwargs)
    data.set_trajectories(X_t, t, cell_order='input')
    return Trajectories(data=data, X=X_t, t=t, cell_ids=cell_ids, genes=panel,
                        cell_types=cell_types, cell_key=cell_key, time_key=time_key,
                        type_key=type_key)
