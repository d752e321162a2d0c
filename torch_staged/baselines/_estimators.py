r"""The simple methods a user tries first, on the same inputs as STAGED and
returning the same interaction tables as
:func:`~torch_staged.interpret.interaction_tables`.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from torch_staged.baselines._design import (
    Problem,
    design,
    neighbour_means,
    problems,
    trajectories,
)
from torch_staged.data.tissue_data import TissueData

INTRA_COLUMNS = ['cell_type', 'source', 'target', 'score', 'abs_score', 'n_edges']
INTER_COLUMNS = ['ligand', 'receptor', 'sender_type', 'receiver_type', 'score',
                 'abs_score', 'n_edges']


class Baseline:
    r"""Base class: ``fit(data, X, t)`` on trajectories ``X [T, N, G]`` in the
    graph's cell order, then :meth:`interaction_tables` and/or
    :meth:`forecast`.

    Attributes:
        name (str): Short name used in benchmark tables.
        signed (bool): Whether scores carry the sign of the effect.
        has_tables (bool): Whether the method scores interactions.
        has_forecast (bool): Whether the method forecasts.
    """
    name = 'baseline'
    signed = True
    has_tables = True
    has_forecast = False

    def fit(self, data: TissueData, X: Optional[Tensor] = None,
            t: Optional[Tensor] = None) -> 'Baseline':
        """Fits on ``X [T, N, G]`` (graph cell order) at times ``t [T]``."""
        raise NotImplementedError

    def interaction_tables(self) -> Tuple[pd.DataFrame, pd.DataFrame]:
        """``(intracellular, intercellular)`` tables, strongest first."""
        raise NotImplementedError(f'{self.name} does not score interactions')

    def forecast(self, X_hist: Tensor, t_hist: Tensor, t_new: Tensor) -> Tensor:
        """Predicted states ``[M, N, G]`` at ``t_new [M]`` after the observed
        history ``X_hist [H, N, G]`` at ``t_hist [H]``.
        """
        raise NotImplementedError(f'{self.name} does not forecast')

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}()'


class Persistence(Baseline):
    r"""Forecast :math:`\hat x(t) = x(t_{\text{last}})`: nothing changes."""
    name = 'persistence'
    has_tables = False
    has_forecast = True

    def fit(self, data=None, X=None, t=None) -> 'Persistence':
        return self

    def forecast(self, X_hist: Tensor, t_hist: Tensor, t_new: Tensor) -> Tensor:
        return X_hist[-1].unsqueeze(0).expand(len(t_new), *X_hist.shape[1:]).clone()


class LinearExtrapolation(Baseline):
    r"""Forecast :math:`\hat x(t) = x_H + (t - t_H)\,(x_H - x_{H-1}) /
    (t_H - t_{H-1})` from the last two observations (persistence when only one
    is given).
    """
    name = 'linear_extrapolation'
    has_tables = False
    has_forecast = True

    def fit(self, data=None, X=None, t=None) -> 'LinearExtrapolation':
        return self

    def forecast(self, X_hist: Tensor, t_hist: Tensor, t_new: Tensor) -> Tensor:
        last = X_hist[-1]
        if X_hist.shape[0] < 2:
            return Persistence().forecast(X_hist, t_hist, t_new)
        slope = (last - X_hist[-2]) / (t_hist[-1] - t_hist[-2])
        step = (torch.as_tensor(t_new, dtype=last.dtype) - t_hist[-1]).view(-1, 1, 1)
        return last.unsqueeze(0) + step * slope.unsqueeze(0)


def _standardise(Z: np.ndarray, y: np.ndarray):
    mean_z, sd_z = Z.mean(0), Z.std(0)
    sd_z = np.where(sd_z > 1e-12, sd_z, np.inf)  # constant columns get coefficient 0
    sd_y = y.std() if y.std() > 1e-12 else 1.0
    return (Z - mean_z) / sd_z, (y - y.mean()) / sd_y, mean_z, sd_z, y.mean(), sd_y


class DerivativeRegression(Baseline):
    r"""Regression of finite-difference derivatives on expression.

    Per cell type :math:`\tau` and target gene :math:`v`:

    .. math::
        \frac{x_v(t_{k+1}) - x_v(t_k)}{t_{k+1} - t_k} \sim
        \sum_{u \in \text{prior}_\tau(v)} \beta_{uv}\, x_u
        + \sum_{(\ell, v) \in \text{pairs},\, s} \beta_{\ell v s}\, \bar x_{\ell, s}
        + \beta_{vv}\, x_v,

    over all cells of type :math:`\tau` and intervals, with regressors at the
    interval's midpoint; :math:`\bar x_{\ell,s}` is the neighbour average of the
    ligand over senders of type :math:`s`. The candidates are those of the
    tissue graph (its GRN prior, all pairs without one, and its ligand ->
    receptor pairs). Regressors and derivatives are standardised, so the
    scores (standardised coefficients) compare across targets. The self term
    :math:`x_v` (decay) is fitted but not reported.

    Args:
        point (str, optional): ``'mid'`` or ``'left'`` end of each interval for
            the regressors. (default: :obj:`'mid'`)
        seed (int, optional): Seed of randomised fits. (default: :obj:`0`)
    """
    name = 'derivative_regression'

    def __init__(self, point: str = 'mid', seed: int = 0):
        if point not in ('mid', 'left'):
            raise ValueError(f"'point' must be 'mid' or 'left' (got {point!r})")
        self.point, self.seed = point, seed

    def _coefficients(self, Z: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, data: TissueData, X: Optional[Tensor] = None,
            t: Optional[Tensor] = None) -> 'DerivativeRegression':
        X_np, t_np = trajectories(data, X, t)
        self.data_ = data
        self.lr_ = np.array([[data.gene_names.index(a), data.gene_names.index(b)]
                             for a, b in data.lr_pairs], dtype=np.int64).reshape(-1, 2)
        nbr = neighbour_means(data, X_np) if len(self.lr_) else None
        self.problems_: List[Problem] = problems(data)
        self.fits_: List[Dict[str, np.ndarray]] = []
        for problem in self.problems_:
            Z, y = design(problem, X_np, t_np, nbr, self.lr_, self.point)
            Zs, ys, mean_z, sd_z, mean_y, sd_y = _standardise(Z, y)
            coef = self._coefficients(Zs, ys)
            raw = coef * sd_y / sd_z
            self.fits_.append(dict(coef=coef, raw=raw,
                                   intercept=mean_y - raw @ mean_z))
        return self

    def interaction_tables(self) -> Tuple[pd.DataFrame, pd.DataFrame]:
        data = self.data_
        genes, types = np.asarray(data.gene_names), np.asarray(data.cell_type_names)
        pairs = np.asarray(data.lr_pairs, dtype=object).reshape(-1, 2)
        intra, inter = [], []
        for p, fitted in zip(self.problems_, self.fits_):
            n = p.sources.size
            coef = fitted['coef']
            intra += [(types[p.cell_type], genes[u], genes[p.target], c, m)
                      for u, c, m in zip(p.sources, coef[:n], p.n_intra)]
            inter += [(pairs[q, 0], pairs[q, 1], types[s], types[p.cell_type], c, m)
                      for (q, s), c, m in zip(p.pairs, coef[n:n + len(p.pairs)],
                                              p.n_inter)]
        return _table(intra, INTRA_COLUMNS), _table(inter, INTER_COLUMNS)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(point='{self.point}')"


def _table(rows, columns) -> pd.DataFrame:
    keys = columns[:-3]
    frame = pd.DataFrame([r[:-2] + (r[-2], abs(r[-2]), r[-1]) for r in rows],
                         columns=columns)
    if not len(frame):
        return pd.DataFrame(columns=columns)
    frame['n_edges'] = frame['n_edges'].astype(np.int64)
    return frame.sort_values('abs_score', ascending=False, kind='stable'
                             ).reset_index(drop=True)[keys + columns[-3:]]
