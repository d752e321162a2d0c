r"""Ground-truth tissue simulations: an agent-based tissue with known signed
GRNs and ligand -> receptor couplings, and helpers to turn it into training
data.
"""
from torch_staged.sim._convert import (
    graph_from_simulation,
    trajectories_from_anndata,
    truth_trajectories,
)
from torch_staged.sim._simulate import simulate_tissue

__all__ = [
    'simulate_tissue',
    'trajectories_from_anndata',
    'truth_trajectories',
    'graph_from_simulation',
]
