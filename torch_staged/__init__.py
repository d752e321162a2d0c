r"""torch_staged: STAGED graph neural ODEs of cell-cell communication for PyG."""
from torch_staged import data, interpret, metrics, models, nn, sim, train
from torch_staged._perturb import PerturbationResult, perturb

__version__ = '0.1.0'

__all__ = ['data', 'nn', 'models', 'train', 'interpret', 'metrics', 'sim', 'perturb',
           'PerturbationResult', '__version__']
