r"""torch_staged: STAGED graph neural ODEs of cell-cell communication for PyG."""
from torch_staged import data, interpret, io, metrics, models, nn, plot, sim, train, trajectory
from torch_staged._perturb import PerturbationResult, perturb

__version__ = '0.1.0'

__all__ = ['data', 'nn', 'models', 'train', 'interpret', 'metrics', 'sim', 'io',
           'trajectory', 'plot', 'perturb',
           'PerturbationResult', '__version__']
