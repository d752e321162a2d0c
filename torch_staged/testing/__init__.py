r"""Slow, obvious references used to check the fast paths (and small data
generators for tests).
"""
from torch_staged.testing._params import perturb_parameters
from torch_staged.testing._reference import dense_staged_conv
from torch_staged.testing._tissues import linear_coupled_tissue, random_tissue

__all__ = ['dense_staged_conv', 'random_tissue', 'linear_coupled_tissue',
           'perturb_parameters']
