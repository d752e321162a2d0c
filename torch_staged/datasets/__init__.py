r"""Ground-truth tissues for benchmarking, in the spirit of
:mod:`torch_geometric.datasets`: deterministic, offline generators of
long-format AnnData time courses with the truth in ``uns['truth']`` (the
layout of :func:`~torch_staged.sim.simulate_tissue`, whose home stays
:mod:`torch_staged.sim`).
"""
from torch_staged.datasets._krumsiek11 import krumsiek11, krumsiek11_rules
from torch_staged.datasets._lateral_inhibition import lateral_inhibition
from torch_staged.sim import simulate_tissue

__all__ = ['simulate_tissue', 'krumsiek11', 'krumsiek11_rules', 'lateral_inhibition']
