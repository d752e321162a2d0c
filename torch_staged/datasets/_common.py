"""Shared parts of the dataset generators: layouts, integration, observation
and the long-format AnnData every generator returns (the layout of
:func:`torch_staged.sim.simulate_tissue`).
"""
from typing import Dict, List, Optional, Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from torch_staged.sim._simulate import _check_float, _check_int, _check_times
from torch_staged.sim._simulate import _integrate as integrate_rk4  # noqa: F401 (shared)

__all__ = ['hex_lattice', 'patches', 'integrate_rk4', 'observe', 'long_anndata',
           'check_int', 'check_float', 'check_times', 'all_pairs_prior', 'make_prior',
           'intra_truth', 'PRIORS']

PRIORS = ('none', 'true', 'half_false')

check_int, check_float, check_times = _check_int, _check_float, _check_times


def hex_lattice(num_cells: int, spacing: float = 1.0) -> np.ndarray:
    """``[N, 2]`` positions of a hexagonal lattice, filled row by row (each
    interior cell has 6 neighbours at distance :obj:`spacing`).
    """
    cols = int(np.ceil(np.sqrt(num_cells)))
    i = np.arange(num_cells)
    row, col = i // cols, i % cols
    x = (col + 0.5 * (row % 2)) * spacing
    y = row * spacing * np.sqrt(3.0) / 2.0
    return np.stack([x, y], axis=1)


def patches(pos: np.ndarray, num_types: int, num_patches: int,
            rng: np.random.Generator) -> np.ndarray:
    """Cell types as Voronoi regions of random points (seed ``s`` has type
    ``s % num_types``).
    """
    if num_types == 1:
        return np.zeros(pos.shape[0], dtype=np.int64)
    seeds = rng.uniform(pos.min(0), pos.max(0), (num_patches, pos.shape[1]))
    _, nearest = cKDTree(seeds).query(pos)
    return (np.asarray(nearest) % num_types).astype(np.int64)


def observe(states: np.ndarray, noise: float, rng: np.random.Generator,
            snapshot: bool, snapshot_fraction: float, rng_snap: np.random.Generator):
    """Noisy observations ``max(0, x + noise * eps)`` and the observed cells
    ``[T, n]`` (all cells, or a fresh random subset per time in snapshot mode).
    """
    noisy = np.maximum(states + noise * rng.standard_normal(states.shape), 0.0)
    T, N = states.shape[:2]
    if snapshot:
        size = max(int(round(snapshot_fraction * N)), 1)
        cells = np.stack([np.sort(rng_snap.choice(N, size, replace=False))
                          for _ in range(T)])
    else:
        cells = np.repeat(np.arange(N)[None], T, 0)
    return noisy, cells


def all_pairs_prior(genes: Sequence[str], type_names: Sequence[str]) -> pd.DataFrame:
    """Every ordered pair of distinct genes, for every cell type."""
    G = len(genes)
    src, dst = np.nonzero(~np.eye(G, dtype=bool))
    g = np.asarray(genes)
    frames = [pd.DataFrame({'source': g[src], 'target': g[dst], 'cell_type': name})
              for name in type_names]
    return pd.concat(frames, ignore_index=True)


def make_prior(prior: str, edges: pd.DataFrame, genes: Sequence[str],
               type_names: Sequence[str], rng: np.random.Generator) -> pd.DataFrame:
    """The GRN prior (source, target, cell_type): ``'none'`` every ordered pair,
    ``'true'`` the true :obj:`edges`, ``'half_false'`` those plus as many
    random false edges per type.
    """
    if prior not in PRIORS:
        raise ValueError(f"'prior' must be one of {PRIORS} (got {prior!r})")
    if prior == 'none':
        return all_pairs_prior(genes, type_names)
    true = list(zip(edges['source'], edges['target']))
    pool = [(s, t) for t in genes for s in genes if s != t and (s, t) not in set(true)]
    rows = []
    for name in type_names:
        rows += [(s, t, name) for s, t in true]
        if prior == 'half_false':
            pick = rng.choice(len(pool), min(len(true), len(pool)), replace=False)
            rows += [(*pool[i], name) for i in np.sort(pick)]
    return pd.DataFrame(rows, columns=['source', 'target', 'cell_type'])


def intra_truth(grn_prior: pd.DataFrame, edges: pd.DataFrame) -> pd.DataFrame:
    """One truth row (cell_type, source, target, sign, strength) per prior
    candidate; 0 for a candidate that is not in :obj:`edges`.
    """
    intra = grn_prior.merge(edges[['source', 'target', 'strength']],
                            on=['source', 'target'], how='left')
    intra['strength'] = intra['strength'].fillna(0.0)
    intra['sign'] = np.sign(intra['strength']).astype(np.int64)
    return intra[['cell_type', 'source', 'target', 'sign', 'strength']]


def long_anndata(*, states: np.ndarray, noisy: np.ndarray, cells: np.ndarray,
                 times: np.ndarray, pos: np.ndarray, codes: np.ndarray,
                 type_names: List[str], genes: List[str], lr_pairs: pd.DataFrame,
                 grn_prior: pd.DataFrame, intracellular: pd.DataFrame,
                 intercellular: pd.DataFrame, roles: List[str], k: int,
                 snapshot: bool, extra: Optional[Dict] = None) -> ad.AnnData:
    """The long-format AnnData of :func:`~torch_staged.sim.simulate_tissue`:
    one row per observed (cell, time), sorted by time then cell, with
    ``layers['truth']``, ``uns['lr_pairs']``, ``uns['grn_prior']`` and
    ``uns['truth']``.
    """
    T, N = states.shape[:2]
    time_idx = np.repeat(np.arange(T), cells.shape[1])
    cell_idx = cells.reshape(-1)
    obs = pd.DataFrame({
        'cell_id': cell_idx.astype(np.int64),
        'time': times[time_idx],
        'cell_type': pd.Categorical.from_codes(codes[cell_idx], categories=type_names),
    }, index=[f'c{c}_t{t}' for c, t in zip(cell_idx, time_idx)])
    adata = ad.AnnData(X=noisy[time_idx, cell_idx].astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=list(genes)),
                       obsm={'spatial': pos[cell_idx].copy()},
                       layers={'truth': states[time_idx, cell_idx]})
    truth = dict(intracellular=intracellular.reset_index(drop=True),
                 intercellular=intercellular.reset_index(drop=True),
                 genes=pd.DataFrame({'gene': list(genes), 'role': list(roles)}),
                 cell_id=np.arange(N, dtype=np.int64), cell_pos=pos,
                 cell_type=np.asarray(type_names)[codes].astype(str), times=times,
                 num_cells=N, num_genes=len(genes), num_cell_types=len(type_names),
                 k=k, snapshot=bool(snapshot))
    truth.update(extra or {})
    if snapshot:
        truth['full_trajectories'] = states
    adata.uns['lr_pairs'] = lr_pairs.reset_index(drop=True)
    adata.uns['grn_prior'] = grn_prior.reset_index(drop=True)
    adata.uns['truth'] = truth
    return adata
