"""From a simulated long-format AnnData to trajectories and a tissue graph.

Small on purpose: these helpers read what :func:`simulate_tissue` writes. A
general reader of spatial transcriptomics belongs to :mod:`torch_staged.io`.
"""
from typing import List, Optional, Tuple

import anndata as ad
import numpy as np
import torch
from torch import Tensor

from torch_staged.data import TissueData, build_tissue_graph

Trajectories = Tuple[np.ndarray, np.ndarray, List[str], Tensor, Tensor]


def _dense(matrix) -> np.ndarray:
    if hasattr(matrix, 'toarray'):
        matrix = matrix.toarray()
    return np.asarray(matrix, dtype=np.float64)


def trajectories_from_anndata(
    adata: ad.AnnData,
    *,
    layer: Optional[str] = None,
    cell_key: str = 'cell_id',
    time_key: str = 'time',
    type_key: str = 'cell_type',
    spatial_key: str = 'spatial',
    dtype: torch.dtype = torch.float32,
) -> Trajectories:
    r"""Reshapes a long-format AnnData in which every cell is observed at every
    time into trajectories :math:`X \in \mathbb{R}^{T \times N \times G}`.

    Cells are put in sorted :obj:`cell_key` order and times in increasing
    order; position and type are those of each cell's first row. Snapshot data
    (different cells at each time) has no trajectories: use
    :func:`truth_trajectories` for the simulated truth of such data.

    Args:
        adata (anndata.AnnData): One row per (cell, time), e.g. from
            :func:`simulate_tissue`.
        layer (str, optional): Read ``adata.layers[layer]`` instead of ``X``
            (``'truth'`` for the noise-free states). (default: :obj:`None`)
        cell_key (str, optional): Column of ``obs`` with the cell ids.
            (default: :obj:`'cell_id'`)
        time_key (str, optional): Column of ``obs`` with the times.
            (default: :obj:`'time'`)
        type_key (str, optional): Column of ``obs`` with the cell types.
            (default: :obj:`'cell_type'`)
        spatial_key (str, optional): Key of ``obsm`` with the positions.
            (default: :obj:`'spatial'`)
        dtype (torch.dtype, optional): Floating dtype of :obj:`X` and :obj:`t`.
            (default: :obj:`torch.float32`)

    Returns:
        A tuple ``(pos, cell_type, genes, X, t)``: positions ``[N, D]`` (numpy),
        cell-type labels ``[N]`` (numpy str), the gene names, expression
        ``[T, N, G]`` and times ``[T]`` (tensors).

    Example:
        >>> from torch_staged.sim import simulate_tissue, trajectories_from_anndata
        >>> adata = simulate_tissue(60, seed=1)
        >>> pos, cell_type, genes, X, t = trajectories_from_anndata(adata)
        >>> X.shape, t.shape
        (torch.Size([17, 60, 20]), torch.Size([17]))
    """
    for key in (cell_key, time_key, type_key):
        if key not in adata.obs:
            raise ValueError(f"adata.obs has no column '{key}' (it has "
                             f"{list(adata.obs.columns)})")
    if spatial_key not in adata.obsm:
        raise ValueError(f"adata.obsm has no '{spatial_key}' (it has "
                         f"{list(adata.obsm.keys())})")
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"adata.layers has no '{layer}' (it has "
                         f"{list(adata.layers.keys())})")
    cell_ids, cell = np.unique(adata.obs[cell_key].to_numpy(), return_inverse=True)
    times, time = np.unique(adata.obs[time_key].to_numpy(np.float64),
                            return_inverse=True)
    N, T, G = cell_ids.size, times.size, adata.n_vars
    if T < 2:
        raise ValueError(f"Trajectories need at least two time points (got {T})")
    key = time.reshape(-1) * N + cell.reshape(-1)
    seen = np.bincount(key, minlength=T * N)
    if (seen != 1).any():
        missing, repeated = int((seen == 0).sum()), int((seen > 1).sum())
        raise ValueError(
            f"Every cell must be observed exactly once at every time, but of the "
            f"{T} x {N} (time, cell) pairs {missing} are missing and {repeated} "
            f"repeated. Snapshot data has no trajectories: use "
            f"truth_trajectories() for simulated data, or match the snapshots "
            f"first")
    values = _dense(adata.X if layer is None else adata.layers[layer])
    X = np.empty((T * N, G))
    X[key] = values
    first = np.empty(N, dtype=np.int64)
    first[cell[::-1]] = np.arange(adata.n_obs)[::-1]  # first row of every cell
    pos = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[first]
    cell_type = np.asarray(adata.obs[type_key].astype(str).to_numpy())[first]
    genes = [str(g) for g in adata.var_names]
    return (pos, cell_type, genes, torch.from_numpy(X.reshape(T, N, G)).to(dtype),
            torch.from_numpy(times).to(dtype))


def truth_trajectories(adata: ad.AnnData, dtype: torch.dtype = torch.float64
                       ) -> Trajectories:
    r"""The noise-free states of every simulated cell at every time, also in
    snapshot mode (from ``uns['truth']``).

    Args:
        adata (anndata.AnnData): The output of :func:`simulate_tissue`.
        dtype (torch.dtype, optional): Floating dtype of :obj:`X` and :obj:`t`.
            (default: :obj:`torch.float64`)

    Returns:
        A tuple ``(pos, cell_type, genes, X, t)`` as
        :func:`trajectories_from_anndata`, cells in ``cell_id`` order.
    """
    truth = adata.uns.get('truth', None)
    if truth is None or 'cell_pos' not in truth:
        raise ValueError("adata.uns['truth'] is missing: this is not the output of "
                         "simulate_tissue()")
    genes = [str(g) for g in adata.var_names]
    pos = np.asarray(truth['cell_pos'], dtype=np.float64)
    cell_type = np.asarray(truth['cell_type']).astype(str)
    t = torch.as_tensor(np.asarray(truth['times'], dtype=np.float64)).to(dtype)
    if 'full_trajectories' in truth:
        X = torch.as_tensor(np.asarray(truth['full_trajectories'])).to(dtype)
        return pos, cell_type, genes, X, t
    _, _, _, X, _ = trajectories_from_anndata(adata, layer='truth', dtype=dtype)
    return pos, cell_type, genes, X, t


def graph_from_simulation(
    adata: ad.AnnData,
    *,
    layer: Optional[str] = None,
    k: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
    **kwargs,
) -> Tuple[TissueData, Tensor, Tensor]:
    r"""Builds the tissue graph of a (non-snapshot) simulation with its own
    priors, and returns it with the trajectories.

    Calls :func:`~torch_staged.data.build_tissue_graph` with the positions and
    types of :func:`trajectories_from_anndata`, ``uns['lr_pairs']``,
    ``uns['grn_prior']``, every cell type in order, the simulation's :obj:`k`
    and :obj:`x` = the first observed state.

    Args:
        adata (anndata.AnnData): The output of :func:`simulate_tissue` with
            ``snapshot=False``.
        layer (str, optional): ``'truth'`` for the noise-free states.
            (default: :obj:`None`, the noisy ``X``)
        k (int, optional): Neighbours per cell. (default: the simulation's)
        dtype (torch.dtype, optional): Floating dtype. (default: :obj:`torch.float32`)
        **kwargs (optional): Further arguments of
            :func:`~torch_staged.data.build_tissue_graph` (e.g. ``grn=None``
            for an all-pairs GRN, ``lr_pairs=None`` for no signalling).

    Returns:
        ``(data, X, t)``: the :class:`~torch_staged.data.TissueData`, the
        trajectories ``[T, N, G]`` in the builder's input order (sorted
        ``cell_id``; pass them to ``fit(model, data, X, t)``) and the times
        ``[T]``.

    Example:
        >>> from torch_staged.sim import simulate_tissue, graph_from_simulation
        >>> data, X, t = graph_from_simulation(simulate_tissue(seed=0))
        >>> data.num_cells, data.num_genes, X.shape
        (300, 20, torch.Size([17, 300, 20]))
    """
    pos, cell_type, genes, X, t = trajectories_from_anndata(adata, layer=layer,
                                                            dtype=dtype)
    if 'lr_pairs' not in adata.uns or 'grn_prior' not in adata.uns:
        raise ValueError("adata.uns needs 'lr_pairs' and 'grn_prior' (the output of "
                         "simulate_tissue())")
    truth = adata.uns.get('truth', {})
    if k is None:
        k = int(truth.get('k', 8))
    type_col = adata.obs['cell_type']
    cell_types = (list(type_col.cat.categories) if hasattr(type_col, 'cat')
                  else None)
    kwargs.setdefault('lr_pairs', adata.uns['lr_pairs'])
    kwargs.setdefault('grn', adata.uns['grn_prior'])
    data = build_tissue_graph(pos, cell_type, genes, k=k, cell_types=cell_types,
                              x=X[0], dtype=dtype, **kwargs)
    return data, X, t
