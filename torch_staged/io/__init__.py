r"""The AnnData boundary: long-format spatial transcriptomics in, results out,
and prior-knowledge tables.

* :func:`read_trajectories`: long-format AnnData (one row per cell and time)
  -> :class:`Trajectories` (``X [T, N, G]``, ``t [T]`` and the tissue graph);
* :func:`write_results`: predictions, interaction tables and signalling graphs
  back into AnnData under the keys of :class:`Key`;
* :func:`read_lr_pairs`, :func:`read_grn`, :func:`builtin_lr_pairs`,
  :func:`liana_lr_pairs`, :func:`commot_lr_pairs`: ligand -> receptor and GRN priors;
* :func:`panel_report`, :func:`to_panel`: how much of a prior resource
  survives the gene panel, before fitting.
"""
from torch_staged.io._constants import Key
from torch_staged.io._panel import panel_report, to_panel
from torch_staged.io._priors import (
    builtin_lr_pairs,
    commot_lr_pairs,
    liana_lr_pairs,
    read_grn,
    read_lr_pairs,
)
from torch_staged.io._read import Trajectories, read_trajectories
from torch_staged.io._write import write_results

__all__ = [
    'Key',
    'Trajectories',
    'read_trajectories',
    'write_results',
    'read_lr_pairs',
    'read_grn',
    'builtin_lr_pairs',
    'liana_lr_pairs',
    'commot_lr_pairs',
    'panel_report',
    'to_panel',
]
