r"""Figures people would rather look at than read (matplotlib, saved as PNG)."""
from torch_staged.plot._plots import (
    incoming_per_cell,
    interaction_heatmaps,
    loss_curves,
    spatial_signalling,
    trajectories,
)

__all__ = ['loss_curves', 'trajectories', 'interaction_heatmaps', 'spatial_signalling',
           'incoming_per_cell']
