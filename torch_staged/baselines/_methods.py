"""Ridge, lasso, GENIE3-style forest and correlation of derivatives."""
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from torch_staged.baselines._design import neighbour_means
from torch_staged.baselines._estimators import DerivativeRegression

#: Ridge penalties searched by leave-one-out cross-validation.
RIDGE_ALPHAS = tuple(np.logspace(-3, 3, 13))


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:  # pragma: no cover - the test extra installs it
        raise ImportError("This baseline needs scikit-learn: pip install "
                          "'torch_staged[baselines]'") from None


class _LinearODE(DerivativeRegression):
    r"""A fitted linear regression is a linear graph ODE
    :math:`\dot x_v = c_v + \sum \beta_{uv} x_u + \sum \beta_{\ell v s}
    \bar x_{\ell,s}`: forecasts integrate it with RK4 (step at most
    :obj:`dt`), recomputing the neighbour averages from the evolving state.
    """
    has_forecast = True
    dt = 0.1

    def _derivative(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros_like(x)
        nbr = neighbour_means(self.data_, x[None])[:, 0] if len(self.lr_) else None
        for p, fitted in zip(self.problems_, self.fits_):
            c, raw = p.cells, fitted['raw']
            n = p.sources.size
            value = fitted['intercept'] + x[c][:, p.sources] @ raw[:n]
            for (q, s), b in zip(p.pairs, raw[n:n + len(p.pairs)]):
                value = value + b * nbr[s][c, self.lr_[q, 0]]
            out[c, p.target] = value + raw[-1] * x[c, p.target]
        return out

    def forecast(self, X_hist: Tensor, t_hist: Tensor, t_new: Tensor) -> Tensor:
        x = X_hist[-1].detach().cpu().double().numpy()
        times = np.r_[float(t_hist[-1]), torch.as_tensor(t_new).double().numpy()]
        out = []
        with np.errstate(over='ignore', invalid='ignore'):
            for k in range(times.size - 1):
                steps = max(int(np.ceil((times[k + 1] - times[k]) / self.dt - 1e-9)), 1)
                h = (times[k + 1] - times[k]) / steps
                for _ in range(steps):
                    k1 = self._derivative(x)
                    k2 = self._derivative(x + 0.5 * h * k1)
                    k3 = self._derivative(x + 0.5 * h * k2)
                    k4 = self._derivative(x + h * k3)
                    x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
                out.append(x.copy())
        return torch.as_tensor(np.stack(out)).to(X_hist.dtype)


class Ridge(_LinearODE):
    r"""Ridge regression of derivatives (see :class:`DerivativeRegression`),
    with the penalty chosen per regression by efficient leave-one-out
    cross-validation (scikit-learn's ``RidgeCV``) over :obj:`alphas`.

    Args:
        alphas (sequence of float, optional): Penalties on standardised data.
            (default: :math:`10^{-3} .. 10^{3}`, 13 values)
        point (str, optional): See :class:`DerivativeRegression`.
    """
    name = 'ridge'

    def __init__(self, alphas: Sequence[float] = RIDGE_ALPHAS, point: str = 'mid',
                 seed: int = 0):
        super().__init__(point, seed)
        self.alphas = tuple(float(a) for a in alphas)

    def _coefficients(self, Z, y):
        _sklearn()
        from sklearn.linear_model import RidgeCV
        return RidgeCV(alphas=self.alphas, fit_intercept=False).fit(Z, y).coef_


class Lasso(_LinearODE):
    r"""Lasso of derivatives (see :class:`DerivativeRegression`), penalty by
    5-fold cross-validation (scikit-learn's ``LassoCV``); coefficients of
    unselected regressors are exactly 0.

    Args:
        n_alphas (int, optional): Penalties on the path. (default: :obj:`30`)
        point (str, optional): See :class:`DerivativeRegression`.
        seed (int, optional): Seed of the folds' shuffling. (default: :obj:`0`)
    """
    name = 'lasso'

    def __init__(self, n_alphas: int = 30, point: str = 'mid', seed: int = 0):
        super().__init__(point, seed)
        self.n_alphas = n_alphas

    def _coefficients(self, Z, y):
        _sklearn()
        from sklearn.linear_model import LassoCV
        from sklearn.model_selection import KFold
        folds = KFold(5, shuffle=True, random_state=self.seed)
        model = LassoCV(alphas=self.n_alphas, cv=folds, fit_intercept=False,
                        max_iter=5000)
        return model.fit(Z, y).coef_


class Forest(DerivativeRegression):
    r"""GENIE3-style importance (Huynh-Thu et al., PLoS ONE 5:e12776, 2010;
    on derivatives as in dynGENIE3, Sci. Rep. 8:3384, 2018): a random forest
    per (cell type, target) predicts :math:`\dot x_v` from the candidates; the
    score of a candidate is its impurity importance (unsigned, summing to 1
    per target with the self term).

    Args:
        n_estimators (int, optional): Trees per target. (default: :obj:`100`)
        max_samples (int, optional): Samples drawn per tree (caps the cost on
            large tissues). (default: :obj:`5000`)
        seed (int, optional): Seed of the forests. (default: :obj:`0`)
    """
    name = 'forest'
    signed = False

    def __init__(self, n_estimators: int = 100, max_samples: int = 5000,
                 point: str = 'mid', seed: int = 0):
        super().__init__(point, seed)
        self.n_estimators, self.max_samples = n_estimators, max_samples

    def _coefficients(self, Z, y):
        _sklearn()
        from sklearn.ensemble import RandomForestRegressor
        forest = RandomForestRegressor(
            n_estimators=self.n_estimators, max_features='sqrt', n_jobs=1,
            max_samples=min(self.max_samples, y.size), random_state=self.seed)
        return forest.fit(Z, y).feature_importances_


class Correlation(DerivativeRegression):
    r"""Pearson correlation of each candidate regressor with the target's
    derivative, :math:`\mathrm{corr}(x_u, \dot x_v)` (signed; no
    forecast).
    """
    name = 'correlation'

    def _coefficients(self, Z, y):
        return Z.T @ y / y.size
