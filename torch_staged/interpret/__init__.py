r"""Interpretation: learned interaction strengths from attention and Jacobians,
as tables per gene pair / cell type and per ligand -> receptor pair / sender ->
receiver cell-type pair, and the figures that go with them.
"""
from torch_staged.interpret._figures import (
    response_curves,
    response_table,
    signalling_heatmaps,
    spatial_edge_map,
    strongest_pair,
)
from torch_staged.interpret._tables import edge_scores, interaction_tables

__all__ = [
    'edge_scores',
    'interaction_tables',
    'signalling_heatmaps',
    'spatial_edge_map',
    'strongest_pair',
    'response_table',
    'response_curves',
]
