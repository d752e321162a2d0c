r"""Trajectories from spatial snapshots: spatial transcriptomics observes
different cells at each time, often in several sections with their own
coordinate frames. :func:`align_sections` maps the sections into one frame;
:func:`infer_trajectories` links consecutive snapshots by optimal transport
into long-format trajectories that :func:`torch_staged.io.read_trajectories`
reads.
"""
from torch_staged.trajectory._ot import infer_trajectories, spatial_information
from torch_staged.trajectory._sections import align_sections

__all__ = ['infer_trajectories', 'align_sections', 'spatial_information']
