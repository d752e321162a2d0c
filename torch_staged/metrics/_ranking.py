"""Ranking metrics: how well learned scores separate true interactions from
false ones.
"""
from typing import Dict, Optional, Sequence, Union

import numpy as np
import pandas as pd

from torch_staged.metrics._regression import ArrayOrTensor, as_numpy, rankdata


def _scores_labels(scores: ArrayOrTensor, labels: ArrayOrTensor):
    scores = as_numpy(scores, 'scores').reshape(-1)
    labels = as_numpy(labels, 'labels').reshape(-1)
    if scores.size != labels.size:
        raise ValueError(f"'scores' and 'labels' must have the same length (got "
                         f"{scores.size} and {labels.size})")
    if not np.isin(labels, (0.0, 1.0)).all():
        bad = np.unique(labels[~np.isin(labels, (0.0, 1.0))])[:5].tolist()
        raise ValueError(f"'labels' must be binary, 0/1 or False/True (got values "
                         f"{bad})")
    labels = labels.astype(bool)
    num_pos = int(labels.sum())
    if num_pos == 0 or num_pos == labels.size:
        raise ValueError(f"'labels' must hold both classes, but all {labels.size} "
                         f"are {'positive' if num_pos else 'negative'}: the ranking "
                         f"metric is undefined")
    return scores, labels


def auroc(scores: ArrayOrTensor, labels: ArrayOrTensor) -> float:
    r"""Area under the ROC curve, exact and tie-aware (Mann-Whitney U).

    With :math:`R_+` the sum of the average ranks of the :math:`n_+` positives
    among all scores,

    .. math::
        \mathrm{AUROC} = \frac{R_+ - n_+(n_+ + 1)/2}{n_+\, n_-},

    the probability that a random positive scores higher than a random
    negative, ties counting one half.

    Args:
        scores (array or Tensor): ``[M]`` scores, higher = more likely positive.
        labels (array or Tensor): ``[M]`` binary labels (0/1 or bool).

    Returns:
        float

    Raises:
        ValueError: if the labels hold a single class.

    Example:
        >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    scores, labels = _scores_labels(scores, labels)
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    rank_sum = rankdata(scores)[labels].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def auprc(scores: ArrayOrTensor, labels: ArrayOrTensor) -> float:
    r"""Area under the precision-recall curve as the average precision.

    Thresholds are the distinct scores, from high to low (tied scores enter
    together); with precision :math:`P_k` and recall :math:`R_k` at the
    :math:`k`-th threshold,

    .. math::
        \mathrm{AP} = \sum_k (R_k - R_{k-1})\, P_k, \qquad R_0 = 0,

    the definition of ``sklearn.metrics.average_precision_score`` (no
    interpolation). A random ranking scores about the fraction of positives.

    Args:
        scores (array or Tensor): ``[M]`` scores, higher = more likely positive.
        labels (array or Tensor): ``[M]`` binary labels (0/1 or bool).

    Returns:
        float

    Raises:
        ValueError: if the labels hold a single class.

    Example:
        >>> round(auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 4)
        0.8333
    """
    scores, labels = _scores_labels(scores, labels)
    order = np.argsort(-scores, kind='mergesort')
    scores, labels = scores[order], labels[order]
    # Last index of every group of tied scores.
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    tp = np.cumsum(labels)[last]
    precision = tp / (last + 1.0)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def interaction_recovery(learned: pd.DataFrame, truth: pd.DataFrame,
                         keys: Sequence[str], score_col: str,
                         truth_col: str = 'strength') -> Dict[str, Union[float, int]]:
    r"""Scores learned interaction strengths against a ground-truth table.

    The two tables are joined on :obj:`keys` (inner join; key columns are
    compared as strings). A row is positive when
    :math:`|\text{truth\_col}| > 0` and is ranked by ``learned[score_col]``
    (e.g. a mean attention weight; use its absolute value if the sign does not
    matter). The truth table defines the candidates, e.g. every edge of the GRN
    prior (``uns['truth']['intracellular']``, keys ``['cell_type', 'source',
    'target']``) or every ligand -> receptor pair and type pair
    (``uns['truth']['intercellular']``, keys ``['ligand', 'receptor',
    'sender_type', 'receiver_type']``).

    Args:
        learned (DataFrame): Learned scores, at most one row per key.
        truth (DataFrame): Ground truth, at most one row per key.
        keys (list of str): Columns present in both tables to join on.
        score_col (str): Column of :obj:`learned` with the scores.
        truth_col (str, optional): Column of :obj:`truth` with the true
            strength. (default: :obj:`'strength'`)

    Returns:
        dict with ``auroc``, ``auprc`` (floats), ``n_pos``, ``n_neg`` (matched
        positive / negative truth rows) and ``n_missing`` (truth rows without a
        learned score, left out).

    Example:
        >>> import pandas as pd
        >>> truth = pd.DataFrame({'source': list('abcd'), 'strength': [0, 0, 1, -2]})
        >>> learned = pd.DataFrame({'source': list('abcd'),
        ...                         'score': [0.1, 0.4, 0.35, 0.8]})
        >>> interaction_recovery(learned, truth, ['source'], 'score')['auroc']
        0.75
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("'keys' is empty: give the columns to join on")
    for name, frame, cols in (('learned', learned, keys + [score_col]),
                              ('truth', truth, keys + [truth_col])):
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"'{name}' must be a pandas DataFrame (got "
                             f"{type(frame).__name__})")
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"'{name}' lacks the column(s) {missing} (it has "
                             f"{list(frame.columns)})")
    left = learned[keys + [score_col]].copy()
    right = truth[keys + [truth_col]].copy()
    for frame, name in ((left, 'learned'), (right, 'truth')):
        for key in keys:
            frame[key] = frame[key].astype(str)
        dup = frame.duplicated(keys)
        if dup.any():
            example = frame.loc[dup, keys].iloc[0].tolist()
            raise ValueError(f"'{name}' has {int(dup.sum())} duplicated key(s) "
                             f"{keys}, e.g. {example}: aggregate them first")
    score_name, truth_name = '__score__', '__truth__'
    left = left.rename(columns={score_col: score_name})
    right = right.rename(columns={truth_col: truth_name})
    merged = right.merge(left, on=keys, how='left')
    found = merged[score_name].notna().to_numpy()
    merged = merged[found]
    strength = as_numpy(merged[truth_name].to_numpy(np.float64), truth_col)
    labels = np.abs(strength) > 0
    scores = merged[score_name].to_numpy(np.float64)
    return dict(auroc=auroc(scores, labels), auprc=auprc(scores, labels),
                n_pos=int(labels.sum()), n_neg=int((~labels).sum()),
                n_missing=int((~found).sum()))


def sign_accuracy(learned: pd.DataFrame, truth: pd.DataFrame, keys: Sequence[str],
                  score_col: str = 'score', truth_col: str = 'strength'
                  ) -> Optional[float]:
    r"""Fraction of the true interactions (:math:`\text{truth} \neq 0`) whose
    learned score has the true sign (a score of exactly 0 counts as wrong).

    Args:
        learned (DataFrame): Learned signed scores, one row per key.
        truth (DataFrame): Ground truth, one row per key.
        keys (list of str): Columns to join on (compared as strings).
        score_col (str, optional): Signed score column. (default: :obj:`'score'`)
        truth_col (str, optional): Signed truth column. (default: :obj:`'strength'`)

    Returns:
        The fraction, or :obj:`None` when no true interaction has a score.

    Example:
        >>> import pandas as pd
        >>> truth = pd.DataFrame({'source': list('abc'), 'strength': [1, -1, 0]})
        >>> learned = pd.DataFrame({'source': list('abc'), 'score': [0.5, 0.2, -1.0]})
        >>> sign_accuracy(learned, truth, ['source'])
        0.5
    """
    keys = list(keys)
    left, right = learned[keys + [score_col]].copy(), truth[keys + [truth_col]].copy()
    for frame in (left, right):
        for key in keys:
            frame[key] = frame[key].astype(str)
    merged = right[right[truth_col] != 0].merge(left, on=keys, how='inner')
    if not len(merged):
        return None
    return float((np.sign(merged[score_col].to_numpy(np.float64))
                  == np.sign(merged[truth_col].to_numpy(np.float64))).mean())


def true_pair_rank(intercellular: pd.DataFrame, truth: pd.DataFrame,
                   score_col: str = 'abs_score') -> Optional[int]:
    r"""Worst rank of a true ligand -> receptor pair among the decoys.

    Each candidate pair's score is the largest :obj:`score_col` over its
    (sender type, receiver type) rows. A true pair's rank is 1 + the number of
    decoy pairs (``truth['true_pair']`` false) scoring above it; the worst over
    the true pairs is returned, so 1 means every true pair outranks every
    decoy.

    Returns:
        The rank, or :obj:`None` without true pairs or learned rows.

    Example:
        >>> import pandas as pd
        >>> truth = pd.DataFrame({'ligand': ['A', 'B', 'C'], 'receptor': ['X', 'Y', 'Z'],
        ...                       'true_pair': [True, False, False]})
        >>> learned = pd.DataFrame({'ligand': ['A', 'B', 'C'], 'receptor': ['X', 'Y', 'Z'],
        ...                         'abs_score': [0.5, 0.9, 0.1]})
        >>> true_pair_rank(learned, truth)
        2
    """
    if not len(intercellular) or not len(truth):
        return None
    keys = ['ligand', 'receptor']
    best = intercellular.groupby(keys)[score_col].max().reset_index()
    flags = truth.groupby(keys)['true_pair'].any().reset_index()
    for frame in (best, flags):
        for key in keys:
            frame[key] = frame[key].astype(str)
    merged = flags.merge(best, on=keys, how='left').fillna({score_col: -np.inf})
    decoys = merged.loc[~merged['true_pair'].astype(bool), score_col].to_numpy()
    true = merged.loc[merged['true_pair'].astype(bool), score_col].to_numpy()
    if not true.size:
        return None
    return int(max(1 + (decoys > value).sum() for value in true))
