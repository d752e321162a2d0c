"""Ligand knockout on the cell-cell signalling model: does a fitted STAGED
move the receivers' receptor as the true model does?

For ``lateral_inhibition`` (Collier et al. 1996 Delta-Notch) and each seed:
fit STAGED with the package's defaults on the training times (as
``benchmarks/science.py`` does), then knock the true ligand (``Delta``) out in
every cell, from the noise-free initial state, over all observed times, both
in the fitted model (``torch_staged.perturb``) and in the generator itself
(``knockout='Delta'``, noise 0). Reported for the receptor (``Notch``):
``sign`` (the fraction of cell-times, among those the truth moves by more than
0.05, where the model moves it the same way), ``ratio`` (mean |model change| /
mean |true change| over the same cell-times), ``r`` (Pearson correlation of the
changes over all cell-times) and the mean change of each.

    python benchmarks/knockout.py --seeds 0 1 2 [--json out.json]
    python benchmarks/knockout.py --model-kwargs '{"type_dim": 4}'   # an alternative
    python benchmarks/knockout.py --restarts 3   # ensembles: the mean of 3 fits' changes
"""
import argparse
import json
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from torch_staged import perturb
from torch_staged._benchmark import check_restarts, fit_ensemble, make_task
from torch_staged.datasets import lateral_inhibition
from torch_staged.sim import graph_from_simulation


def _true_trajectories(seed: int, knockout: Optional[str]) -> torch.Tensor:
    adata = lateral_inhibition(seed=seed, noise=0.0, knockout=knockout)
    data, X, _ = graph_from_simulation(adata)
    return data.cells_to_graph(X, dim=1)


def knockout_response(seed: int, ligand: str = 'Delta', receptor: str = 'Notch',
                      threshold: float = 0.05, model_kwargs: Optional[Dict] = None,
                      restarts: int = 1) -> Dict:
    """One seed's figures (see the module docstring); :obj:`model_kwargs` go to
    ``STAGED`` (a measured alternative, not the defaults). With :obj:`restarts`
    > 1 the model's change is the mean over an ensemble (member k fitted from
    the seed ``seed + 100 k``, as ``benchmarks/science.py --restarts``).
    """
    check_restarts(restarts)
    task = make_task('lateral_inhibition', seed)
    base = _true_trajectories(seed, None)
    true = _true_trajectories(seed, ligand) - base
    r = list(task.data.gene_names).index(receptor)
    models, seconds, _ = fit_ensemble(task, 'staged', seed, restarts, model_kwargs)
    result = perturb(models, task.data, base[0], task.t, knockout=ligand)  # the mean
    model_d, true_d = result.delta[1:, :, r].double(), true[1:, :, r].double()
    moved = true_d.abs() > threshold
    return dict(
        seed=seed, restarts=restarts, fit_seconds=seconds, moved=int(moved.sum()),
        sign=float((torch.sign(model_d[moved]) == torch.sign(true_d[moved])).double().mean()),
        ratio=float(model_d[moved].abs().mean() / true_d[moved].abs().mean()),
        r=float(np.corrcoef(model_d.flatten().numpy(), true_d.flatten().numpy())[0, 1]),
        model_mean=float(model_d.mean()), true_mean=float(true_d.mean()))


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--restarts', type=int, default=1,
                        help='fit an ensemble of this many models per seed and score '
                             'the mean of their changes')
    parser.add_argument('--json', default=None)
    parser.add_argument('--model-kwargs', type=json.loads, default={}, metavar='JSON',
                        help='extra STAGED keyword arguments, e.g. \'{"type_dim": 4}\'')
    args = parser.parse_args(argv)
    if args.restarts < 1:
        parser.error(f'--restarts must be >= 1 (got {args.restarts})')
    torch.set_num_threads(args.threads)
    records = []
    for seed in args.seeds:
        tic = time.perf_counter()
        records.append(knockout_response(seed, model_kwargs=args.model_kwargs,
                                         restarts=args.restarts))
        print(f'seed {seed} ({time.perf_counter() - tic:.0f} s): '
              + ', '.join(f'{k}={v:.3g}' for k, v in records[-1].items()
                          if k != 'seed'), flush=True)
    for key in ('sign', 'ratio', 'r'):
        values = [rec[key] for rec in records]
        sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
        print(f'{key}: {np.mean(values):.3f} ± {sd:.3f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == '__main__':
    main()
