r"""Training: :func:`fit`, checkpoints."""
from torch_staged.train._checkpoint import load_checkpoint, load_model, save_checkpoint
from torch_staged.train._fit import FitResult, fit

__all__ = ['fit', 'FitResult', 'save_checkpoint', 'load_checkpoint', 'load_model']
