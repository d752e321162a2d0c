r"""The methods a user tries first, for comparison with STAGED on the same
inputs: forecasts (:class:`Persistence`, :class:`LinearExtrapolation`) and
interaction scores from finite-difference derivatives (:class:`Ridge`,
:class:`Lasso`, the GENIE3-style :class:`Forest`, :class:`Correlation`),
returning the tables of :func:`~torch_staged.interpret.interaction_tables`.

Example::

    from torch_staged.baselines import Ridge
    ridge = Ridge().fit(data, X, t)          # X [T, N, G], graph cell order
    intra, inter = ridge.interaction_tables()
    pred = ridge.forecast(X[:10], t[:10], t[10:])
"""
from torch_staged.baselines._estimators import (
    Baseline,
    DerivativeRegression,
    LinearExtrapolation,
    Persistence,
)
from torch_staged.baselines._methods import Correlation, Forest, Lasso, Ridge

#: Every baseline by its benchmark name.
BASELINES = {cls.name: cls for cls in (Persistence, LinearExtrapolation, Ridge, Lasso,
                                       Forest, Correlation)}

__all__ = ['Baseline', 'DerivativeRegression', 'Persistence', 'LinearExtrapolation',
           'Ridge', 'Lasso', 'Forest', 'Correlation', 'BASELINES']
