r"""Metrics of forecasts (errors, :math:`R^2`, rank correlations) and of
interaction recovery (AUROC, average precision), in plain numpy.

Every function takes numpy arrays, torch tensors or lists, computes in float64
on the CPU, and returns Python floats or numpy arrays.
"""
from torch_staged.metrics._ranking import (
    auprc,
    auroc,
    interaction_recovery,
    sign_accuracy,
    true_pair_rank,
)
from torch_staged.metrics._regression import (
    mse,
    r2_score,
    rankdata,
    rollout_error,
    spearman_per_gene,
)

__all__ = [
    'mse',
    'r2_score',
    'rollout_error',
    'spearman_per_gene',
    'rankdata',
    'auroc',
    'auprc',
    'interaction_recovery',
    'sign_accuracy',
    'true_pair_rank',
]
