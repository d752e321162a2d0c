"""Long-format AnnData -> trajectories and the tissue graph."""
import warnings
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
from torch_staged.typing import CELL, ArrayLike, PairTable

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
        library_key (str, optional): The ``obs`` column of the sections
            (:obj:`None`: one tissue).
        libraries (list, optional): The :math:`B` section labels in code order
            (``data['cell'].batch`` indexes this list); with a
            :obj:`library_key`, :attr:`cell_ids` are ``(library, cell id)``
            pairs.
        matches (DataFrame, optional): For trajectories inferred from snapshots
            (:func:`~torch_staged.trajectory.infer_trajectories`), the matching
            of every observed snapshot row to an anchor cell (index: the
            snapshot's ``obs_names``; columns ``time``, ``anchor``, ``weight``);
            :func:`~torch_staged.io.write_results` writes onto those rows.
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
    library_key: Optional[str] = None
    libraries: Optional[List[Any]] = None
    matches: Optional[pd.DataFrame] = None

    @property
    def num_sections(self) -> int:
        """The number :math:`B` of sections (1 without a library key)."""
        return 1 if self.libraries is None else len(self.libraries)

    @property
    def cell_library(self) -> Optional[Tensor]:
        """``[N]`` section code of every cell in input order (:obj:`None`
        without a library key).
        """
        if self.libraries is None:
            return None
        return self.data.cells_to_input(self.data[CELL].batch)

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
                + (f'sections={self.num_sections}, ' if self.libraries else '')
                + f'edges={self.data.edge_counts()})')


def _cell_values(obs: pd.DataFrame, cell_key: str,
                 library_key: Optional[str] = None) -> np.ndarray:
    """Per row, the identity of its cell: ``obs[cell_key]`` or, with
    :obj:`library_key`, the pair ``(library, cell id)`` (ids may repeat across
    sections).
    """
    def plain(column: pd.Series) -> np.ndarray:
        if isinstance(column.dtype, pd.CategoricalDtype):
            return column.astype(column.cat.categories.dtype).to_numpy()
        return column.to_numpy()

    values = plain(obs[cell_key])
    if library_key is None:
        return values
    keys = np.empty(values.size, dtype=object)
    keys[:] = list(zip(plain(obs[library_key]).tolist(), values.tolist()))
    return keys


def cell_positions(cell_ids: Sequence, values: np.ndarray) -> np.ndarray:
    """For every value of :func:`_cell_values`, its index in :obj:`cell_ids`
    (-1 when unknown).
    """
    if len(cell_ids) and isinstance(cell_ids[0], tuple):
        index = pd.MultiIndex.from_tuples(list(cell_ids))
        return index.get_indexer(pd.MultiIndex.from_tuples(list(values)))
    return pd.Index(cell_ids).get_indexer(values)


def _factorize_cells(values: np.ndarray, cell_key: str):
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:
        raise ValueError(f"adata.obs[{cell_key!r}] mixes types that cannot be sorted "
                         f"(e.g. numbers and strings): make the ids one type"
                         ) from None
    return codes.astype(np.int64), list(uniques.tolist() if hasattr(uniques, 'tolist')
                                        else uniques)


def _type_names(type_col: pd.Series, type_labels: np.ndarray, type_key: str
                ) -> List[str]:
    """Cell-type names in code order: the **used** categories of a categorical
    column (in category order; unused ones are dropped with a warning), else the
    sorted labels.
    """
    used = set(type_labels.tolist())
    if not isinstance(type_col.dtype, pd.CategoricalDtype):
        return sorted(used)
    names = [str(c) for c in type_col.cat.categories]
    unused = [c for c in names if c not in used]
    if unused:
        warnings.warn(
            f"adata.obs[{type_key!r}] has categories without any cell {unused}: "
            f"they are not made cell types of this tissue. Pass cell_types=[...] "
            f"listing every type to keep them (e.g. a trained model's types)",
            stacklevel=3)
    return [c for c in names if c in used]


def _matches(adata) -> Optional[pd.DataFrame]:
    """The snapshot-row -> anchor matching stored by
    :func:`~torch_staged.trajectory.infer_trajectories`, if any.
    """
    params = adata.uns.get(Key.uns.trajectory, None)
    if not isinstance(params, dict):
        return None
    table = params.get(Key.uns.matches, None)
    return table.copy() if isinstance(table, pd.DataFrame) else None


def _check_section_sizes(section: np.ndarray, libraries: list, library_key: str,
                         neighbors, k) -> None:
    """Raises when a section has too few cells for its kNN neighbourhood."""
    sizes = np.bincount(section)
    if isinstance(neighbors, str) and neighbors == 'knn' and isinstance(k, int) \
            and k >= int(sizes.min()):
        name = libraries[int(np.argmin(sizes))]
        raise ValueError(
            f"'k' must be smaller than the number of cells of every section, but "
            f"section {name!r} (obs[{library_key!r}]) has {int(sizes.min())} cells "
            f"(k={k}): use a smaller 'k' or drop that section")


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
    library_key: Optional[str] = None,
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

    **Several sections** (samples, libraries; the scverse ``library_key``):
    with :obj:`library_key`, a cell is the pair ``(obs[library_key],
    obs[cell_key])`` (ids may repeat across sections), each section keeps its
    own coordinate frame, and the tissue graph is block diagonal: neighbours
    are found within sections only (``data['cell'].batch`` holds the section
    codes), so a fit over all sections is the sum of the fits of the sections
    (see :func:`~torch_staged.data.build_tissue_graph`).

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
        library_key (str, optional): ``obs`` column of the section (sample,
            library) of every row. (default: :obj:`None`, one tissue)
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
            label raises. (default: the categories of ``obs[type_key]`` that
            have cells when it is categorical, else the sorted labels)
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
    check_obs_key(adata, cell_key, 'cell_key', 'cell ids')
    time_col = check_obs_key(adata, time_key, 'time_key', 'observation times')
    type_col = check_obs_key(adata, type_key, 'type_key', 'cell types')
    pos_rows = check_spatial(adata, spatial_key)
    matrix = expression_matrix(adata, layer)
    panel, columns = check_gene_panel(adata, genes)
    row_times = numeric_times(time_col, time_key)
    check_two_times(row_times, time_key)

    lib_col = None
    if library_key is not None:
        lib_col = check_obs_key(adata, library_key, 'library_key',
                                'section (library) ids')
    cell, cell_ids = _factorize_cells(_cell_values(adata.obs, cell_key, library_key),
                                      cell_key if library_key is None
                                      else f'{library_key}, {cell_key}')
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
        cell_types = _type_names(type_col, type_labels, type_key)
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
    section, libraries = None, None
    if lib_col is not None:
        section, libraries = _factorize_cells(lib_col.to_numpy()[first], library_key)
        _check_section_sizes(section, libraries, library_key, neighbors,
                             graph_kwargs.get('k', 8))

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
        batch=section, dtype=dtype, **graph_kwargs)
    if libraries is not None:
        data.section_names = [str(b) for b in libraries]
    data.set_trajectories(X_t, t, cell_order='input')
    return Trajectories(data=data, X=X_t, t=t, cell_ids=cell_ids, genes=panel,
                        cell_types=cell_types, cell_key=cell_key, time_key=time_key,
                        type_key=type_key, library_key=library_key,
                        libraries=libraries, matches=_matches(adata))
