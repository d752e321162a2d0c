"""Vectorised cell-neighbourhood graphs (no pyg-lib / torch-cluster needed).

Every function takes positions ``[N, D]`` as a float64 numpy array and returns
``(src, dst, dist)`` numpy arrays of directed edges ``src -> dst`` (a neighbour
sends to the cell), sorted by ``dst`` and then by distance or ``src``.
"""
from typing import Optional, Tuple

import numpy as np
from scipy.spatial import Delaunay, QhullError, cKDTree

Edges = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _sort_by_dst(src: np.ndarray, dst: np.ndarray, dist: np.ndarray) -> Edges:
    order = np.lexsort((src, dst))
    return src[order], dst[order], dist[order]


def knn_edges(pos: np.ndarray, k: int) -> Edges:
    """Each cell receives from its :obj:`k` nearest other cells."""
    num_cells = pos.shape[0]
    tree = cKDTree(pos)
    dist, idx = tree.query(pos, k=k + 1, workers=-1)
    dist, idx = dist.reshape(num_cells, k + 1), idx.reshape(num_cells, k + 1)
    keep = idx != np.arange(num_cells)[:, None]
    # With duplicated positions a cell may not find itself among its k + 1
    # nearest points: keep its k nearest then.
    no_self = keep.all(axis=1)
    keep[no_self, -1] = False
    src = idx[keep].reshape(num_cells, k)
    dist = dist[keep].reshape(num_cells, k)
    dst = np.repeat(np.arange(num_cells), k)
    return src.reshape(-1), dst, dist.reshape(-1)


def radius_edges(pos: np.ndarray, radius: float) -> Edges:
    """Every pair of distinct cells closer than :obj:`radius` (both directions)."""
    pairs = cKDTree(pos).query_pairs(radius, output_type='ndarray')
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    dist = np.linalg.norm(pos[src] - pos[dst], axis=1)
    return _sort_by_dst(src, dst, dist)


def delaunay_edges(pos: np.ndarray) -> Edges:
    """Edges of the Delaunay triangulation (both directions)."""
    num_cells, dim = pos.shape
    if num_cells < dim + 1:
        raise ValueError(f"A Delaunay neighbourhood in {dim}-D needs at least "
                         f"{dim + 1} cells (got {num_cells})")
    try:
        simplices = Delaunay(pos).simplices
    except QhullError as err:
        raise ValueError(
            "The Delaunay triangulation of the cell positions failed (are all "
            "cells on one line or plane?); use neighbors='knn' or 'radius' "
            f"instead. Qhull said: {str(err).splitlines()[0]}") from None
    a, b = np.triu_indices(simplices.shape[1], k=1)
    u, v = simplices[:, a].reshape(-1), simplices[:, b].reshape(-1)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    key = np.unique(lo.astype(np.int64) * num_cells + hi)
    lo, hi = key // num_cells, key % num_cells
    src = np.concatenate([lo, hi])
    dst = np.concatenate([hi, lo])
    dist = np.linalg.norm(pos[src] - pos[dst], axis=1)
    return _sort_by_dst(src, dst, dist)


def given_edges(pos: np.ndarray, edge_index: np.ndarray,
                dist: Optional[np.ndarray] = None) -> Edges:
    """A user-given neighbourhood ``[2, E]`` of ``(source, target)`` rows."""
    src, dst = edge_index[0].astype(np.int64), edge_index[1].astype(np.int64)
    if dist is None:
        dist = np.linalg.norm(pos[src] - pos[dst], axis=1)
    return _sort_by_dst(src, dst, np.asarray(dist, dtype=np.float64))


def morton_order(pos: np.ndarray) -> np.ndarray:
    """A permutation of the cells along a Morton (Z-order) space-filling curve.

    Neighbouring cells get nearby ids, so gathers over neighbour edges touch
    nearby memory. Coordinates are quantised to 21 bits (2-D) or 20 bits (3-D)
    per axis and their bits interleaved.
    """
    num_cells, dim = pos.shape
    bits = 21 if dim == 2 else 20
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    scale = np.where(hi > lo, (2**bits - 1) / np.where(hi > lo, hi - lo, 1), 0)
    q = ((pos - lo) * scale).astype(np.uint64)
    code = np.zeros(num_cells, dtype=np.uint64)
    for b in range(bits):  # loop over bits, vectorised over cells
        for d in range(dim):
            bit = (q[:, d] >> np.uint64(b)) & np.uint64(1)
            code |= bit << np.uint64(b * dim + d)
    return np.argsort(code, kind='stable')
