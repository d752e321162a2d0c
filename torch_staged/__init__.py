r"""torch_staged: STAGED graph neural ODEs of cell-cell communication for PyG."""
from torch_staged import data

__version__ = '0.1.0'

__all__ = ['data', '__version__']
