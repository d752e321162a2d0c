"""Regression designs of the derivative baselines: for every (cell type,
target gene), finite-difference derivatives and the candidate regressors of
the tissue graph (prior regulators, neighbour-averaged ligands per sender type).
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from torch_staged.data.tissue_data import TissueData
from torch_staged.typing import CELL, GENE, NEAR, REGULATES, SIGNALS


@dataclass
class Problem:
    """One regression ``dx_v/dt ~ columns`` over the cells of one type.

    Attributes:
        cell_type (int): Receiving cell type.
        target (int): Target gene :math:`v`.
        sources (numpy.ndarray): Candidate regulators :math:`u` (gene ids).
        pairs (numpy.ndarray): ``[P, 2]`` (ligand-receptor pair id, sender type)
            of the intercellular columns.
        cells (numpy.ndarray): Cells of the type (graph order).
        n_intra (numpy.ndarray), n_inter (numpy.ndarray): Edges per column.
    """
    cell_type: int
    target: int
    sources: np.ndarray
    pairs: np.ndarray
    cells: np.ndarray
    n_intra: np.ndarray
    n_inter: np.ndarray


def trajectories(data: TissueData, X: Optional[Tensor], t: Optional[Tensor]
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """``X [T, N, G]`` (graph cell order) and ``t [T]`` as float64 numpy."""
    if X is None:
        if 'traj' not in data[GENE]:
            raise ValueError("Give X [T, N, G] and t [T], or store trajectories on "
                             "the graph with data.set_trajectories()")
        X, t = data.trajectories(), data.t if t is None else t
    if t is None:
        raise ValueError("Give the observation times 't' [T] with X")
    X = torch.as_tensor(X).detach().cpu().double().numpy()
    t = torch.as_tensor(t).detach().cpu().double().numpy().reshape(-1)
    if X.ndim != 3 or X.shape[1:] != (data.num_cells, data.num_genes):
        raise ValueError(f"'X' must have shape [T, {data.num_cells}, {data.num_genes}] "
                         f"(graph cell order; got {list(X.shape)})")
    if t.size != X.shape[0] or t.size < 2 or not (np.diff(t) > 0).all():
        raise ValueError(f"'t' must be {X.shape[0]} strictly increasing times "
                         f"(got {t.tolist()})")
    return X, t


def _counts(src: np.ndarray, dst: np.ndarray, keys: List[np.ndarray]) -> pd.DataFrame:
    frame = pd.DataFrame({f'k{i}': k for i, k in enumerate(keys)})
    return frame.groupby(list(frame.columns)).size().rename('n').reset_index()


def problems(data: TissueData) -> List[Problem]:
    """One :class:`Problem` per (cell type, gene) with at least one candidate."""
    G, K = data.num_genes, data.num_cell_types
    cell_type = data[CELL].cell_type.cpu().numpy()
    src, dst = (v.cpu().numpy() for v in data[REGULATES].edge_index)
    intra = _counts(src, dst, [cell_type[dst // G], dst % G, src % G])
    if data[SIGNALS].num_edges:
        src, dst = (v.cpu().numpy() for v in data[SIGNALS].edge_index)
        lr = data[SIGNALS].lr_pair.cpu().numpy()
        inter = _counts(src, dst, [cell_type[dst // G], dst % G, lr, cell_type[src // G]])
    else:
        inter = pd.DataFrame(columns=['k0', 'k1', 'k2', 'k3', 'n'], dtype=np.int64)
    out = []
    for tau in range(K):
        cells = np.flatnonzero(cell_type == tau)
        for v in range(G):
            a = intra[(intra.k0 == tau) & (intra.k1 == v)]
            b = inter[(inter.k0 == tau) & (inter.k1 == v)]
            if cells.size and (len(a) or len(b)):
                out.append(Problem(tau, v, a.k2.to_numpy(np.int64),
                                   b[['k2', 'k3']].to_numpy(np.int64).reshape(-1, 2),
                                   cells, a.n.to_numpy(), b.n.to_numpy()))
    return out


def neighbour_means(data: TissueData, X: np.ndarray) -> np.ndarray:
    r"""``[K, T, N, G]``: :math:`\bar x_{s}(i) = \frac{1}{|\mathcal N(i)|}
    \sum_{j \in \mathcal N(i),\, \tau(j) = s} x_j`, the neighbour average split
    by the sender's type :math:`s`.
    """
    K = data.num_cell_types
    src, dst = (v.cpu().numpy() for v in data[NEAR].edge_index)
    cell_type = data[CELL].cell_type.cpu().numpy()
    N = data.num_cells
    degree = np.maximum(np.bincount(dst, minlength=N), 1).astype(np.float64)
    out = np.zeros((K,) + X.shape)
    for s in range(K):
        keep = cell_type[src] == s
        moved = np.moveaxis(X[:, src[keep]], 1, 0)  # [E_s, T, G]
        acc = np.zeros((N,) + moved.shape[1:])
        np.add.at(acc, dst[keep], moved)
        out[s] = np.moveaxis(acc, 0, 1) / degree[None, :, None]
    return out


def design(problem: Problem, X: np.ndarray, t: np.ndarray, nbr: np.ndarray,
           lr_pairs: np.ndarray, point: str = 'mid') -> Tuple[np.ndarray, np.ndarray]:
    r"""The regressors ``Z [S, p]`` (intracellular sources, intercellular
    columns, then the target itself) and the derivatives ``y [S]`` over all
    (interval, cell) samples: :math:`y = (x_v(t_{k+1}) - x_v(t_k)) / \Delta t_k`
    with regressors at the interval's midpoint (``'mid'``, the mean of both
    ends) or start (``'left'``).
    """
    c = problem.cells
    dt = np.diff(t)[:, None]
    y = ((X[1:, c, problem.target] - X[:-1, c, problem.target]) / dt).reshape(-1)

    def at(values: np.ndarray) -> np.ndarray:  # [T, n] -> [(T - 1) * n]
        mid = 0.5 * (values[1:] + values[:-1]) if point == 'mid' else values[:-1]
        return mid.reshape(-1)

    cols = [at(X[:, c, u]) for u in problem.sources]
    cols += [at(nbr[s][:, c, lr_pairs[p, 0]]) for p, s in problem.pairs]
    cols.append(at(X[:, c, problem.target]))
    return np.stack(cols, axis=1), y
