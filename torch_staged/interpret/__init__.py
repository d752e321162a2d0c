r"""Interpretation: learned interaction strengths from attention and Jacobians."""
from torch_staged.interpret._tables import edge_scores, interaction_tables

__all__ = ['edge_scores', 'interaction_tables']
