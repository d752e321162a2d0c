"""Forecast metrics: errors and correlations of predicted expression."""
from typing import Union

import numpy as np
from torch import Tensor

ArrayOrTensor = Union[np.ndarray, Tensor, list, float]

MULTIOUTPUT = ('variance_weighted', 'uniform_average', 'raw_values')


def as_numpy(value: ArrayOrTensor, name: str) -> np.ndarray:
    """A float64 numpy copy of an array, tensor or list (detached, on the CPU)."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"'{name}' has NaN or Inf entries")
    return arr


def _pair(pred: ArrayOrTensor, target: ArrayOrTensor, min_dim: int = 0):
    pred, target = as_numpy(pred, 'pred'), as_numpy(target, 'target')
    if pred.shape != target.shape:
        raise ValueError(f"'pred' and 'target' must have the same shape (got "
                         f"{list(pred.shape)} and {list(target.shape)})")
    if pred.ndim < min_dim:
        raise ValueError(f"'pred' and 'target' need at least {min_dim} dimensions "
                         f"(got shape {list(pred.shape)})")
    if pred.size == 0:
        raise ValueError("'pred' and 'target' are empty")
    return pred, target


def mse(pred: ArrayOrTensor, target: ArrayOrTensor) -> float:
    r"""Mean squared error over all entries,
    :math:`\frac{1}{M}\sum_i (\hat{y}_i - y_i)^2`.

    Args:
        pred (array or Tensor): Predictions of any shape.
        target (array or Tensor): Targets of the same shape.

    Returns:
        float

    Example:
        >>> mse([1.0, 2.0], [1.0, 4.0])
        2.0
    """
    pred, target = _pair(pred, target)
    return float(np.mean((pred - target) ** 2))


def r2_score(pred: ArrayOrTensor, target: ArrayOrTensor,
             multioutput: str = 'variance_weighted') -> Union[float, np.ndarray]:
    r"""Coefficient of determination, per gene around each gene's mean.

    The last dimension holds the genes :math:`g`; every other dimension (cells,
    times) is pooled into the samples :math:`i`. With
    :math:`\mathrm{SSE}_g = \sum_i (\hat{y}_{ig} - y_{ig})^2` and
    :math:`\mathrm{SST}_g = \sum_i (y_{ig} - \bar{y}_g)^2`, :math:`\bar{y}_g` the
    mean of gene :math:`g` over all cells and times:

    .. math::
        R^2_{\text{variance\_weighted}} = 1 - \frac{\sum_g \mathrm{SSE}_g}
        {\sum_g \mathrm{SST}_g}, \qquad
        R^2_{\text{uniform\_average}} = \frac{1}{G} \sum_g \Big(1 -
        \frac{\mathrm{SSE}_g}{\mathrm{SST}_g}\Big).

    A 1-D input is one gene. A gene with :math:`\mathrm{SST}_g = 0` scores 1 when
    predicted exactly and 0 otherwise (as scikit-learn does); the pooled score
    raises when every gene is constant.

    Args:
        pred (array or Tensor): Predictions ``[..., G]``.
        target (array or Tensor): Targets of the same shape.
        multioutput (str, optional): ``'variance_weighted'`` (one pooled
            :math:`1 - \mathrm{SSE}/\mathrm{SST}`, dominated by the genes that
            vary most), ``'uniform_average'`` (mean of the per-gene scores) or
            ``'raw_values'`` (the ``[G]`` per-gene scores).
            (default: :obj:`'variance_weighted'`)

    Returns:
        float, or a ``[G]`` array for ``'raw_values'``.

    Example:
        >>> r2_score([[1.0, 2.0], [3.0, 2.0]], [[1.0, 1.0], [3.0, 3.0]])
        0.5
    """
    if multioutput not in MULTIOUTPUT:
        raise ValueError(f"'multioutput' must be one of {MULTIOUTPUT} "
                         f"(got {multioutput!r})")
    pred, target = _pair(pred, target, 1)
    if target.ndim == 1:  # one gene
        pred, target = pred[:, None], target[:, None]
    G = target.shape[-1]
    pred, target = pred.reshape(-1, G), target.reshape(-1, G)
    sse = ((pred - target) ** 2).sum(0)
    sst = ((target - target.mean(0)) ** 2).sum(0)
    if multioutput == 'variance_weighted':
        if sst.sum() == 0:
            raise ValueError("r2_score is undefined: every gene of 'target' is "
                             "constant (zero total sum of squares)")
        return float(1.0 - sse.sum() / sst.sum())
    per_gene = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0),
                        np.where(sse == 0, 1.0, 0.0))
    if multioutput == 'raw_values':
        return per_gene
    return float(per_gene.mean())


def rollout_error(pred: ArrayOrTensor, target: ArrayOrTensor) -> np.ndarray:
    r"""Mean squared error at every horizon of a rollout.

    .. math::
        e_t = \frac{1}{NG} \sum_{c, g} (\hat{x}_{t,c,g} - x_{t,c,g})^2

    Args:
        pred (array or Tensor): Predicted trajectories ``[T, N, G]`` (any shape
            whose first dimension is time).
        target (array or Tensor): Targets of the same shape.

    Returns:
        ``[T]`` numpy array.

    Example:
        >>> rollout_error([[0.0, 1.0], [2.0, 2.0]], [[0.0, 1.0], [0.0, 0.0]])
        array([0., 4.])
    """
    pred, target = _pair(pred, target, 1)
    err = (pred - target) ** 2
    return err.reshape(err.shape[0], -1).mean(1)


def rankdata(values: ArrayOrTensor) -> np.ndarray:
    r"""Ranks ``1..n`` of a 1-D array, ties given their average rank
    (``scipy.stats.rankdata(method='average')``).

    Example:
        >>> rankdata([10.0, 20.0, 10.0, 5.0])
        array([2.5, 4. , 2.5, 1. ])
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(values, kind='mergesort')
    sorted_values = values[order]
    # Start of each group of equal values, in sorted order.
    new_group = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], values.size]
    average = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size)
    ranks[order] = average[group]
    return ranks


def spearman_per_gene(pred: ArrayOrTensor, target: ArrayOrTensor) -> np.ndarray:
    r"""Spearman correlation over time of each gene's mean trajectory.

    For ``[T, N, G]`` inputs the trajectories are first averaged over the cells,
    :math:`\bar{x}_{t,g} = \frac{1}{N}\sum_c x_{t,c,g}`; ``[T, G]`` inputs are
    taken as such mean trajectories. Per gene, the Pearson correlation of the
    ranks over the :math:`T` times (ties get their average rank):

    .. math::
        \rho_g = \mathrm{corr}\big(\mathrm{rank}_t(\hat{\bar{x}}_{t,g}),\,
        \mathrm{rank}_t(\bar{x}_{t,g})\big)

    A gene whose mean trajectory is constant in either input gets NaN.

    Args:
        pred (array or Tensor): ``[T, N, G]`` or ``[T, G]``.
        target (array or Tensor): Same shape.

    Returns:
        ``[G]`` numpy array.

    Example:
        >>> spearman_per_gene([[1.0], [2.0], [3.0]], [[1.0], [5.0], [4.0]])
        array([0.5])
    """
    pred, target = _pair(pred, target, 2)
    if pred.ndim == 3:
        pred, target = pred.mean(1), target.mean(1)
    elif pred.ndim != 2:
        raise ValueError(f"'pred' and 'target' must be [T, N, G] or [T, G] (got "
                         f"shape {list(pred.shape)})")
    if pred.shape[0] < 2:
        raise ValueError(f"Spearman correlation needs at least two times (got "
                         f"{pred.shape[0]})")
    rho = np.empty(pred.shape[1])
    for g in range(pred.shape[1]):  # loop over genes only
        a, b = rankdata(pred[:, g]), rankdata(target[:, g])
        a, b = a - a.mean(), b - b.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        rho[g] = (a * b).sum() / denom if denom > 0 else np.nan
    return rho
