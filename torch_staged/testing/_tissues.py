"""Small random tissues for tests and examples."""
from typing import Optional

import numpy as np
import pandas as pd

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
