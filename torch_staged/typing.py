"""Shared type aliases and the fixed node / edge type names of a tissue graph.

Mirrors :mod:`torch_geometric.typing`: every signature in the package uses
these names, and every module that touches a tissue graph refers to its node
and edge types through the constants below rather than through string
literals.
"""
import os
from typing import Sequence, Tuple, Union

import numpy as np
import pandas as pd
from torch import Tensor
from torch_geometric.typing import EdgeType, NodeType, OptTensor  # noqa: F401

#: Node type of the cells (agents).
CELL: NodeType = 'cell'
#: Node type of the gene nodes; node id = cell * num_genes + gene.
GENE: NodeType = 'gene'
#: Spatial neighbourhood between cells; ``edge_attr`` holds the distance.
NEAR: EdgeType = (CELL, 'near', CELL)
#: Intracellular gene -> gene edges (the prior GRN of each cell's type).
REGULATES: EdgeType = (GENE, 'regulates', GENE)
#: Intercellular ligand -> receptor edges between neighbouring cells.
SIGNALS: EdgeType = (GENE, 'signals', GENE)
#: The two gene -> gene relations, in the order used by the fused layer.
RELATIONS: Tuple[EdgeType, EdgeType] = (REGULATES, SIGNALS)

#: Anything that converts to a numeric array: a tensor, a numpy array, a list.
ArrayLike = Union[Tensor, np.ndarray, Sequence]
#: A table of gene pairs: a DataFrame, a list of ``(a, b)`` tuples or a CSV path.
PairTable = Union[pd.DataFrame, Sequence[Tuple[str, str]], str, os.PathLike]
