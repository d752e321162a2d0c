r"""Trajectories from spatial snapshots: spatial transcriptomics observes
different cells at each time; :func:`infer_trajectories` links consecutive
snapshots by optimal transport into long-format trajectories that
:func:`torch_staged.io.read_trajectories` reads.
"""
from torch_staged.trajectory._ot import infer_trajectories

__all__ = ['infer_trajectories']
