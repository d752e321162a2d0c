"""The end-to-end demo: simulate, fit STAGED and its baselines, evaluate, plot."""
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Optional

import torch

from torch_staged import plot
from torch_staged._allocator import tune_allocator
from torch_staged.interpret import edge_scores, interaction_tables
from torch_staged.metrics import interaction_recovery, r2_score, spearman_per_gene
from torch_staged.models import make_model
from torch_staged.sim import graph_from_simulation, simulate_tissue
from torch_staged.train import fit, load_model
from torch_staged.typing import SIGNALS

#: The demo's fits: STAGED and the ablation that the demo's bar compares it with
#: (``no_attention`` is measured by ``benchmarks/science.py``; add it with
#: ``torch-staged demo --models staged no_signalling no_attention``).
MODELS = ('staged', 'no_signalling')
#: Every model the demo can fit.
ALL_MODELS = ('staged', 'no_signalling', 'no_attention')
#: Epochs between the demo's checkpoints (and after the last): each write holds
#: the history so far, so writing every epoch would cost O(epochs^2).
CHECKPOINT_EVERY = 100
INTER_KEYS = ['ligand', 'receptor', 'sender_type', 'receiver_type']
INTRA_KEYS = ['cell_type', 'source', 'target']


def _recovery(model, data, truth: dict, scores: dict) -> Dict[str, Optional[float]]:
    out: Dict[str, Optional[float]] = {}
    for method in ('jacobian', 'attention'):
        intra, inter = interaction_tables(model, data, scores=scores[method])
        rec = interaction_recovery(intra, truth['intracellular'], INTRA_KEYS, 'abs_score')
        out[f'intra_auroc_{method}'] = rec['auroc']
        out[f'intra_auprc_{method}'] = rec['auprc']
        if len(inter):
            rec = interaction_recovery(inter, truth['intercellular'], INTER_KEYS,
                                       'abs_score')
            out[f'inter_auroc_{method}'] = rec['auroc']
            out[f'inter_auprc_{method}'] = rec['auprc']
        else:  # no intercellular edges: nothing to rank
            out[f'inter_auroc_{method}'] = None
            out[f'inter_auprc_{method}'] = None
    return out


def _fit_and_score(name: str, data, X, t, last: int, truth: dict, epochs: Optional[int],
                   lr: Optional[float], seed: int, out: str, progress: bool,
                   threads: Optional[int] = None) -> dict:
    """Fits one model of the demo on the training times, scores it and writes its
    checkpoint (``out/<name>.pt``). Runs in a worker process when the demo's
    fits run in parallel.
    """
    if threads is not None:  # a worker process
        torch.set_num_threads(threads)
        tune_allocator()
    torch.manual_seed(seed)
    model = make_model(name, data.num_genes, data.num_cell_types)  # the defaults
    start, cpu = time.perf_counter(), time.process_time()
    options = {k: v for k, v in (('epochs', epochs), ('lr', lr)) if v is not None}
    # the training times only: the held-out times score a model that never saw
    # them (with fit's default every training interval trains: no validation split)
    result = fit(model, data, X[:last + 1], t[:last + 1], cell_order='graph',
                 patience=None, progress=progress, desc=name, seed=seed,
                 checkpoint=os.path.join(out, f'{name}.pt'),
                 checkpoint_every=CHECKPOINT_EVERY, **options)
    with torch.no_grad():
        pred = model(data, t[last:], X[last])[1:]
        rollout = model(data, t, X[0])
    rec = dict(heldout_r2=r2_score(pred, X[last + 1:]),
               heldout_mse=float(((pred - X[last + 1:]) ** 2).mean()),
               persistence_mse=float(((X[last] - X[last + 1:]) ** 2).mean()),
               rollout_r2=r2_score(rollout[1:], X[1:]),
               spearman=float(spearman_per_gene(rollout, X).mean()))
    scores = {m: edge_scores(model, data, method=m) for m in ('jacobian', 'attention')}
    rec.update(_recovery(model, data, truth, scores))
    rec['inter_auroc'] = rec['inter_auroc_jacobian']
    rec['intra_auroc'] = rec['intra_auroc_jacobian']
    rec['fit_seconds'] = time.perf_counter() - start
    rec['fit_cpu_seconds'] = time.process_time() - cpu
    rec['epochs'] = len(result.history)
    return dict(record=rec, history=result.history, rollout=rollout,
                jacobian=scores['jacobian'])


def _run_jobs(jobs: int, fits: Dict[str, tuple], baseline_args: tuple):
    """The demo's fits and its baselines: in this process (:obj:`jobs` 1), or
    in :obj:`jobs` worker processes (one thread each).
    """
    if jobs <= 1:
        done = {name: _fit_and_score(*args) for name, args in fits.items()}
        return done, _baselines(*baseline_args)
    context = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {name: pool.submit(_fit_and_score, *args[:-1], False, 1)
                   for name, args in fits.items()}
        base = pool.submit(_baselines, *baseline_args, 1)
        done = {}
        for name, future in futures.items():
            done[name] = future.result()
            print(f"{name}: fitted in {done[name]['record']['fit_seconds']:.1f} s",
                  flush=True)
        return done, base.result()


def run_demo(out: str, *, epochs: Optional[int] = None, holdout: int = 4, seed: int = 0,
             lr: Optional[float] = None, models=MODELS, progress: bool = True,
             jobs: Optional[int] = None, **sim_kwargs) -> dict:
    """Runs the demo and writes ``metrics.json`` and PNG figures to :obj:`out`.

    The fits use :func:`~torch_staged.train.fit`'s defaults unless :obj:`epochs`
    or :obj:`lr` are given. The fits of the models and the baselines are
    independent: with :obj:`jobs` > 1 (default: one per core, at most one per
    job) they run in parallel processes of one thread each.

    Returns the metrics dict (``{model: {...}, 'seconds': ...}``).
    """
    os.makedirs(out, exist_ok=True)
    tic = time.perf_counter()
    torch.manual_seed(seed)
    adata = simulate_tissue(seed=seed, **sim_kwargs)
    data, X, t = graph_from_simulation(adata)
    X = data.cells_to_graph(X, dim=1)  # everything below in the graph's cell order
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    truth = adata.uns['truth']
    last = t.numel() - 1 - holdout
    if jobs is None:
        jobs = min(os.cpu_count() or 1, len(models) + 1)

    fits = {name: (name, data, X, t, last, truth, epochs, lr, seed, out, progress)
            for name in models}
    done, baselines = _run_jobs(jobs, fits, (data, X, t, holdout, truth, seed))
    metrics: dict = {name: done[name]['record'] for name in models}
    metrics['baselines'] = baselines
    metrics['seconds'] = time.perf_counter() - tic
    metrics['jobs'] = jobs
    metrics['data'] = dict(cells=data.num_cells, genes=data.num_genes,
                           cell_types=data.num_cell_types, lr_pairs=len(data.lr_pairs),
                           times=t.numel(), heldout_times=holdout, **data.edge_counts())
    with open(os.path.join(out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
    fitted = {}
    if 'staged' in done:
        model, _ = load_model(os.path.join(out, 'staged.pt'))
        fitted['staged'] = (model, done['staged']['jacobian'])
    _figures(out, data, X, t, last, truth, fitted,
             {name: done[name]['history'] for name in models},
             {name: done[name]['rollout'] for name in models})
    return metrics


def _baselines(data, X, t, holdout, truth, seed, threads: Optional[int] = None
               ) -> Dict[str, dict]:
    """The simple methods of :mod:`torch_staged.baselines` on the same split,
    scored as in ``benchmarks/science.py``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    from torch_staged._benchmark import Task, run_baseline
    from torch_staged.baselines import BASELINES
    task = Task('staged_sim', data, X, t, holdout, truth)
    return {name: run_baseline(task, name, seed) for name in BASELINES}


def _figures(out, data, X, t, last, truth, fitted, histories, predictions):
    import matplotlib.pyplot as plt
    plot.loss_curves(histories, os.path.join(out, 'loss_curves.png'))
    plt.close('all')
    # receiver cells with the largest receptor dynamics
    inter = truth['intercellular']
    active = inter[inter['strength'].abs() > 0]
    genes = list(data.gene_names)
    show_genes = []
    if len(active):
        row = active.iloc[0]
        show_genes = [genes.index(row['ligand']), genes.index(row['receptor'])]
    show_genes = (show_genes + [g for g in range(len(genes)) if g not in show_genes])[:3]
    spread = (X[:, :, show_genes[-1]].amax(0) - X[:, :, show_genes[-1]].amin(0))
    cells = spread.argsort(descending=True)[:3].tolist()
    plot.trajectories(t, X, predictions, cells, show_genes, genes,
                      split_time=float(t[last]), path=os.path.join(out, 'trajectories.png'))
    plt.close('all')
    if 'staged' in fitted:
        model, jacobian = fitted['staged']
        _, learned = interaction_tables(model, data, scores=jacobian)
        plot.interaction_heatmaps(learned, inter, path=os.path.join(out, 'interactions.png'))
        plt.close('all')
        scores = jacobian[SIGNALS]
        pairs = [tuple(p) for p in data.lr_pairs]
        pair = pairs.index((row['ligand'], row['receptor'])) if len(active) else 0
        incoming = plot.incoming_per_cell(data, scores, pair)
        plot.spatial_signalling(data['cell'].pos, incoming,
                                title=f'learned incoming {pairs[pair][0]}->{pairs[pair][1]}'
                                      ' signalling (|Jacobian|)',
                                cell_type=data['cell'].cell_type,
                                type_names=list(data.cell_type_names),
                                path=os.path.join(out, 'spatial_signalling.png'))
        plt.close('all')


def summary_table(metrics: dict) -> str:
    """A short text table of the demo's metrics."""
    cols = ['heldout_r2', 'rollout_r2', 'inter_auroc', 'intra_auroc',
            'inter_auroc_attention', 'fit_seconds']
    lines = [f"{'model':<15}" + ''.join(f'{c:>22}' for c in cols)]
    for name, rec in metrics.items():
        if not isinstance(rec, dict) or 'heldout_r2' not in rec:
            continue
        cells = []
        for c in cols:
            v = rec.get(c)
            cells.append(f'{v:>22.4f}' if isinstance(v, float) else f'{"-":>22}')
        lines.append(f'{name:<15}' + ''.join(cells))
    base_cols = ['heldout_mse', 'persistence_mse', 'intra_auroc', 'inter_auroc']
    lines.append(f"{'baseline':<22}" + ''.join(f'{c:>18}' for c in base_cols))
    for name, rec in metrics.get('baselines', {}).items():
        cells = [f'{rec[c]:>18.4f}' if isinstance(rec.get(c), float) else f'{"-":>18}'
                 for c in base_cols]
        lines.append(f'{name:<22}' + ''.join(cells))
    lines.append(f"total {metrics['seconds']:.1f} s")
    return '\n'.join(lines)
