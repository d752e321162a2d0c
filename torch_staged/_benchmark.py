"""Scoring of STAGED and of the baselines on the ground-truth datasets, shared by
``benchmarks/science.py`` and the demo: one record per (dataset, model, seed).
"""
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import anndata as ad
import pandas as pd
import torch
from torch import Tensor

from torch_staged.baselines import BASELINES
from torch_staged.data.tissue_data import TissueData
from torch_staged.datasets import krumsiek11, lateral_inhibition, simulate_tissue
from torch_staged.interpret import interaction_tables
from torch_staged.metrics import (
    interaction_recovery,
    r2_score,
    sign_accuracy,
    true_pair_rank,
)
from torch_staged.models import make_model
from torch_staged.sim import graph_from_simulation
from torch_staged.train import fit

INTRA_KEYS = ['cell_type', 'source', 'target']
INTER_KEYS = ['ligand', 'receptor', 'sender_type', 'receiver_type']
STAGED_MODELS = ('staged', 'no_signalling', 'no_attention')
FIELDS = ('dataset', 'model', 'seed', 'heldout_mse', 'persistence_mse', 'rollout_r2',
          'intra_auroc', 'intra_auprc', 'intra_sign_accuracy', 'inter_auroc',
          'inter_auprc', 'true_pair_rank', 'fit_seconds')


@dataclass
class Task:
    """One dataset instance: the graph, trajectories in graph cell order, the
    number of held-out final times and the truth tables.
    """
    name: str
    data: TissueData
    X: Tensor
    t: Tensor
    holdout: int
    truth: Dict

    @property
    def last(self) -> int:
        """Index of the last training time."""
        return self.t.numel() - 1 - self.holdout


#: name -> (generator(seed, quick) -> AnnData, held-out times)
DATASETS: Dict[str, Callable[[int, bool], ad.AnnData]] = {
    'staged_sim': lambda seed, quick: simulate_tissue(
        60 if quick else 300, **({'num_genes': 12, 'num_pairs': 2} if quick else {}),
        seed=seed),
    'krumsiek11': lambda seed, quick: krumsiek11(40 if quick else 200, seed=seed),
    'krumsiek11_half_false': lambda seed, quick: krumsiek11(
        40 if quick else 200, prior='half_false', seed=seed),
    'lateral_inhibition': lambda seed, quick: lateral_inhibition(
        64 if quick else 324, seed=seed),
}
HOLDOUT = {'staged_sim': 4, 'krumsiek11': 3, 'krumsiek11_half_false': 3,
           'lateral_inhibition': 3}


def make_task(name: str, seed: int, quick: bool = False) -> Task:
    """Generates dataset :obj:`name` with :obj:`seed` as a :class:`Task`."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose from {list(DATASETS)}")
    adata = DATASETS[name](seed, quick)
    data, X, t = graph_from_simulation(adata)
    X = data.cells_to_graph(X, dim=1)
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    return Task(name, data, X, t, HOLDOUT[name], adata.uns['truth'])


def _finite(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def score_tables(intra: pd.DataFrame, inter: Optional[pd.DataFrame], truth: Dict,
                 signed: bool) -> Dict[str, Optional[float]]:
    """AUROC / AUPRC, sign accuracy and the true pairs' rank of two tables."""
    out: Dict[str, Optional[float]] = dict.fromkeys(FIELDS[6:12])
    rec = interaction_recovery(intra, truth['intracellular'], INTRA_KEYS, 'abs_score')
    out.update(intra_auroc=rec['auroc'], intra_auprc=rec['auprc'])
    if signed:
        out['intra_sign_accuracy'] = sign_accuracy(intra, truth['intracellular'],
                                                   INTRA_KEYS)
    inter_truth = truth['intercellular']
    if inter is not None and len(inter) and len(inter_truth):
        rec = interaction_recovery(inter, inter_truth, INTER_KEYS, 'abs_score')
        out.update(inter_auroc=rec['auroc'], inter_auprc=rec['auprc'],
                   true_pair_rank=true_pair_rank(inter, inter_truth))
    return {k: _finite(v) if k != 'true_pair_rank' else v for k, v in out.items()}


def _forecast_record(task: Task, heldout: Optional[Tensor], rollout: Optional[Tensor]):
    X, last = task.X, task.last
    target = X[last + 1:].double()
    out = dict(persistence_mse=float(((X[last].double() - target) ** 2).mean()),
               heldout_mse=None, rollout_r2=None)
    if heldout is not None:
        out['heldout_mse'] = _finite(((heldout.double() - target) ** 2).mean())
    if rollout is not None and torch.isfinite(rollout).all():
        out['rollout_r2'] = _finite(r2_score(rollout, X[1:]))
    return out


def fit_staged(task: Task, model_name: str, seed: int,
               model_kwargs: Optional[Dict] = None, **fit_kwargs):
    """Fits one STAGED variant with the package's defaults on the training
    times only (with ``fit``'s default, every training interval trains), so that the
    held-out times score a model that never saw them. Returns the model, the
    wall and the CPU seconds of the fit.
    """
    torch.manual_seed(seed)
    data, X, t, last = task.data, task.X, task.t, task.last
    model = make_model(model_name, data.num_genes, data.num_cell_types,
                       **(model_kwargs or {}))
    start = time.process_time(), time.perf_counter()
    fit(model, data, X[:last + 1], t[:last + 1], cell_order='graph', seed=seed,
        progress=False, **fit_kwargs)
    return model, time.perf_counter() - start[1], time.process_time() - start[0]


#: Seed offset of the k-th member of an ensemble (member 0 is the single fit).
RESTART_SEED_STEP = 100


def check_restarts(restarts) -> int:
    """Raises unless :obj:`restarts` (the size of an ensemble) is an integer >= 1."""
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"'restarts' must be an integer >= 1 (got {restarts!r})")
    return restarts


def fit_ensemble(task: Task, model_name: str, seed: int, restarts: int = 1,
                 model_kwargs: Optional[Dict] = None, **fit_kwargs):
    """:obj:`restarts` fits of :func:`fit_staged`, member k from the seed
    ``seed + 100 k`` (member 0 is the single fit). Returns the models and the
    summed wall and CPU seconds.
    """
    check_restarts(restarts)
    models, seconds, cpu = [], 0.0, 0.0
    for k in range(restarts):
        model, wall, used = fit_staged(task, model_name, seed + RESTART_SEED_STEP * k,
                                       model_kwargs, **fit_kwargs)
        models.append(model)
        seconds, cpu = seconds + wall, cpu + used
    return models, seconds, cpu


def run_staged(task: Task, model_name: str, seed: int,
               model_kwargs: Optional[Dict] = None, restarts: int = 1,
               **fit_kwargs) -> Dict:
    """Fits one STAGED variant (:func:`fit_staged`) and scores it. With
    :obj:`restarts` > 1 it fits an ensemble (member k from the seed
    ``seed + 100 k``, so member 0 is the single fit) and scores the mean of the
    members' forecasts and their averaged tables (see
    :func:`~torch_staged.interpret.interaction_tables`); ``fit_seconds`` and
    ``fit_cpu_seconds`` are then the members' sums.
    """
    data, X, t, last = task.data, task.X, task.t, task.last
    models, seconds, cpu = fit_ensemble(task, model_name, seed, restarts, model_kwargs,
                                        **fit_kwargs)
    with torch.no_grad():
        heldout = torch.stack([m(data, t[last:], X[last])[1:] for m in models]).mean(0)
        rollout = torch.stack([m(data, t, X[0])[1:] for m in models]).mean(0)
    intra, inter = interaction_tables(models, data, X[:last + 1])
    record = dict(dataset=task.name, model=model_name, seed=seed, fit_seconds=seconds,
                  fit_cpu_seconds=cpu, restarts=restarts)
    record.update(_forecast_record(task, heldout, rollout))
    record.update(score_tables(intra, inter if model_name != 'no_signalling' else None,
                               task.truth, signed=True))
    return record


def run_baseline(task: Task, name: str, seed: int, quick: bool = False) -> Dict:
    """Fits one baseline on the training times and scores it."""
    cls = BASELINES[name]
    kwargs = {'seed': seed} if name in ('lasso', 'forest', 'ridge', 'correlation') else {}
    if quick and name == 'forest':
        kwargs['n_estimators'] = 10
    X, t, last = task.X, task.t, task.last
    start = time.process_time(), time.perf_counter()
    baseline = cls(**kwargs).fit(task.data, X[:last + 1], t[:last + 1])
    heldout = rollout = None
    if baseline.has_forecast:
        heldout = baseline.forecast(X[:last + 1], t[:last + 1], t[last + 1:])
        if name != 'linear_extrapolation':
            rollout = baseline.forecast(X[:1], t[:1], t[1:])
    record = dict(dataset=task.name, model=name, seed=seed)
    record.update(_forecast_record(task, heldout, rollout))
    record.update(dict.fromkeys(FIELDS[6:12]))
    if baseline.has_tables:
        intra, inter = baseline.interaction_tables()
        record.update(score_tables(intra, inter, task.truth, baseline.signed))
    record['fit_seconds'] = time.perf_counter() - start[1]
    record['fit_cpu_seconds'] = time.process_time() - start[0]
    return record
