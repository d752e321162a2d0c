r"""Tissue graphs: the :class:`TissueData` layout and its builder."""
from torch_staged.data._builder import build_tissue_graph
from torch_staged.data._tile import tile
from torch_staged.data.tissue_data import TissueData

__all__ = ['TissueData', 'build_tissue_graph', 'tile']
