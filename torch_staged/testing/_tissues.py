"""Small random tissues for tests and examples."""
from typing import Optional, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from torch_staged.data import TissueData, build_tissue_graph


def random_tissue(num_cells: int = 30, num_genes: int = 6, num_cell_types: int = 3,
                  num_pairs: int = 3, regulators: Optional[int] = 2, k: int = 4,
                  num_features: int = 1, autocrine: bool = False, seed: int = 0,
                  **kwargs) -> TissueData:
    """A random tissue (uniform positions of density 1) with a random per-type GRN
    of :obj:`regulators` regulators per gene (all pairs when :obj:`None`),
    :obj:`num_pairs` ligand -> receptor pairs and random states ``x``.
    """
    rng = np.random.default_rng(seed)
    side = np.sqrt(num_cells)
    pos = rng.uniform(0, side, (num_cells, 2))
    cell_type = rng.integers(0, num_cell_types, num_cells)
    genes = [f'g{i}' for i in range(num_genes)]
    pairs = set()
    while len(pairs) < num_pairs:
        a, b = rng.choice(num_genes, 2, replace=False)
        pairs.add((genes[a], genes[b]))
    grn = None
    if regulators is not None:
        rows = []
        for t in range(num_cell_types):
            for g in range(num_genes):
                others = np.delete(np.arange(num_genes), g)
                for s in rng.choice(others, min(regulators, num_genes - 1),
                                    replace=False):
                    rows.append((genes[s], genes[g], t))
        grn = pd.DataFrame(rows, columns=['source', 'target', 'cell_type'])
    x = rng.normal(size=(num_cells, num_genes, num_features))
    return build_tissue_graph(pos, cell_type, genes, sorted(pairs), grn, k=k,
                              autocrine=autocrine,
                              cell_types=list(range(num_cell_types)), x=x, **kwargs)


def linear_coupled_tissue(num_cells: int = 30, seed: int = 0
                          ) -> Tuple[TissueData, Tensor, Tensor]:
    r"""A tiny tissue with known linear coupled dynamics of genes L, R and T.

    The dynamics are

    .. math::
        \dot L_i = -0.5 L_i + 0.3 (1 + \tau_i), \quad
        \dot R_i = \frac{1}{|\mathcal{N}(i)|}\sum_{j \in \mathcal{N}(i)} L_j - R_i,
        \quad \dot T_i = R_i - 0.4 T_i

    so each receptor ``R`` is driven by the neighbours' ligand ``L``. Integrated
    with RK4 (step 0.01) and observed at 11 times in :math:`[0, 4]`.

    Returns:
        ``(data, X [11, N, 3] in graph cell order, t [11])``.
    """
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, np.sqrt(num_cells) * 1.1, (num_cells, 2))
    cell_type = rng.integers(0, 2, num_cells)
    data = build_tissue_graph(pos, cell_type, ['L', 'R', 'T'], [('L', 'R')],
                              [('R', 'T'), ('T', 'L')], k=4, cell_types=[0, 1])
    src, dst = data['cell', 'near', 'cell'].edge_index
    deg = torch.bincount(dst, minlength=num_cells).double()
    kind = data['cell'].cell_type.double()

    def rhs(x: Tensor) -> Tensor:
        L, R, T = x.unbind(1)
        mean_l = torch.zeros(num_cells, dtype=x.dtype).index_add_(0, dst, L[src]) / deg
        return torch.stack([-0.5 * L + 0.3 * (1 + kind), mean_l - R, R - 0.4 * T], 1)

    x = torch.tensor(rng.uniform(0, 1, (num_cells, 3)))
    states, h = [x], 0.01
    for _ in range(10):
        for _ in range(40):
            k1 = rhs(x)
            k2 = rhs(x + h / 2 * k1)
            k3 = rhs(x + h / 2 * k2)
            k4 = rhs(x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        states.append(x)
    return data, torch.stack(states).float(), torch.linspace(0, 4, 11)
