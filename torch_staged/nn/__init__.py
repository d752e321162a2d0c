r"""Neural network layers: the fused :class:`STAGEDConv` and the ODE vector field."""
from torch_staged.nn._cpp import build as build_cpp_kernels
from torch_staged.nn._cpp import cpp_kernels_available, use_cpp_kernels, use_simd
from torch_staged.nn._fused import FusedGeneGraph, fuse_gene_graph
from torch_staged.nn.conv import STAGEDConv
from torch_staged.nn.ode_func import STAGEDODEFunc

__all__ = ['STAGEDConv', 'STAGEDODEFunc', 'FusedGeneGraph', 'fuse_gene_graph',
           'use_cpp_kernels', 'cpp_kernels_available', 'build_cpp_kernels', 'use_simd']
