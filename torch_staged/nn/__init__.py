r"""Neural network layers: the fused :class:`STAGEDConv` and the ODE vector field."""
from torch_staged.nn._fused import FusedGeneGraph, fuse_gene_graph
from torch_staged.nn.conv import STAGEDConv

__all__ = ['STAGEDConv', 'FusedGeneGraph', 'fuse_gene_graph']
