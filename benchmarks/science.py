"""How well STAGED learns, against the simple methods a user tries first.

Every dataset of the ground-truth suite (``torch_staged.datasets``) x
{STAGED with the package's defaults, ``no_signalling``, ``no_attention``,
persistence, linear extrapolation, ridge, lasso, GENIE3-style forest,
correlation} x seeds. Writes one JSON list of records (``dataset, model,
seed, heldout_mse, persistence_mse, rollout_r2, intra_auroc, intra_auprc,
intra_sign_accuracy, inter_auroc, inter_auprc, true_pair_rank,
fit_seconds``; ``null`` where a figure does not apply) and prints a table of
means +- sd over the seeds.

    python benchmarks/science.py --json results/science.json        # full
    python benchmarks/science.py --quick --json /tmp/science.json   # smoke test
    python benchmarks/science.py --models staged --fit-kwargs '{"holdout": null}'
    python benchmarks/science.py --models staged --restarts 3      # ensembles of 3 fits
"""
import argparse
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from torch_staged._benchmark import (
    DATASETS,
    FIELDS,
    STAGED_MODELS,
    make_task,
    run_baseline,
    run_staged,
)
from torch_staged.baselines import BASELINES

MODELS = list(STAGED_MODELS) + list(BASELINES)
#: gene nodes x times of each dataset: the order in which the jobs start
LARGEST = {'staged_sim': 300 * 20 * 17, 'lateral_inhibition': 324 * 15 * 21,
           'krumsiek11': 200 * 11 * 15, 'krumsiek11_half_false': 200 * 11 * 15}
SHOWN = [('heldout_mse', 'held-out MSE', '{:.4f}'), ('persistence_mse', 'persist. MSE', '{:.4f}'),
         ('heldout_ratio', 'MSE / persist.', '{:.2f}'),
         ('rollout_r2', 'rollout R2', '{:.3f}'), ('intra_auroc', 'GRN AUROC', '{:.3f}'),
         ('intra_sign_accuracy', 'GRN sign acc.', '{:.2f}'),
         ('inter_auroc', 'L-R AUROC', '{:.3f}'), ('true_pair_rank', 'true pair rank', '{:.1f}'),
         ('fit_cpu_seconds', 'fit CPU s', '{:.1f}')]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument('--models', nargs='+', default=MODELS, choices=MODELS)
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=None,
                        help='override fit() epochs for the STAGED models '
                             '(default: the package default)')
    parser.add_argument('--fit-kwargs', type=json.loads, default={}, metavar='JSON',
                        help='extra fit() keyword arguments of the STAGED models, e.g. '
                             '\'{"holdout": null}\' (a measured alternative, not the defaults)')
    parser.add_argument('--model-kwargs', type=json.loads, default={}, metavar='JSON',
                        help='extra STAGED keyword arguments, e.g. \'{"mlp_channels": 16}\'')
    parser.add_argument('--restarts', type=int, default=1,
                        help="fit each STAGED model this many times (seeds seed + 100 k) "
                             "and score the ensemble: averaged tables, mean forecast")
    parser.add_argument('--threads', type=int, default=1, help='torch threads per job')
    parser.add_argument('--jobs', type=int, default=os.cpu_count() or 1,
                        help='(dataset, seed) jobs run in parallel processes, one '
                             'thread each (default: one per core)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny datasets, one seed, 2 STAGED epochs (smoke test)')
    parser.add_argument('--json', default=None, help='write the records here')
    parser.add_argument('--summarise', default=None, metavar='JSON',
                        help='only print the tables of an earlier run\'s records')
    parser.add_argument('--markdown', action='store_true',
                        help='print the summary as a Markdown table')
    return parser.parse_args(argv)


def _value(record: Dict, field: str) -> Optional[float]:
    if field == 'heldout_ratio':  # derived: held-out MSE / persistence MSE
        if record.get('heldout_mse') is None or not record.get('persistence_mse'):
            return None
        return record['heldout_mse'] / record['persistence_mse']
    return record.get(field)


def _cell(rows: List[Dict], field: str, fmt: str) -> str:
    values = [_value(r, field) for r in rows if _value(r, field) is not None]
    if not values:
        return '-'
    text = fmt.format(np.mean(values))
    if len(values) > 1:
        text += ' ± ' + fmt.format(np.std(values, ddof=1))
    return text


def summarise(records: List[Dict], markdown: bool = False) -> str:
    """Mean ± sd over the seeds (sample sd), one row per (dataset, model)."""
    keys = dict.fromkeys((r['dataset'], r['model']) for r in records)
    table = []
    for dataset, model in keys:
        rows = [r for r in records if r['dataset'] == dataset and r['model'] == model]
        table.append([dataset, model] + [_cell(rows, f, fmt) for f, _, fmt in SHOWN])
    names = ['dataset', 'model'] + [name for _, name, _ in SHOWN]
    if markdown:
        lines = ['| ' + ' | '.join(names) + ' |', '|' + '---|' * len(names)]
        return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in table])
    head = f'{names[0]:<22}{names[1]:<21}' + ''.join(f'{n:>16}' for n in names[2:])
    lines = [head, '-' * len(head)]
    lines += [f'{r[0]:<22}{r[1]:<21}' + ''.join(f'{c:>16}' for c in r[2:]) for r in table]
    return '\n'.join(lines)


def run_job(dataset: str, seed: int, models: Sequence[str], quick: bool,
            fit_kwargs: Dict, threads: int, model_kwargs: Optional[Dict] = None,
            restarts: int = 1) -> List[Dict]:
    """Every model on one (dataset, seed)."""
    torch.set_num_threads(threads)
    task = make_task(dataset, seed, quick=quick)
    records = []
    for model in models:
        tic = time.perf_counter()
        if model in STAGED_MODELS:
            record = run_staged(task, model, seed, model_kwargs, restarts, **fit_kwargs)
        else:
            record = run_baseline(task, model, seed, quick=quick)
        records.append(record)
        print(f'{dataset} seed {seed} {model} ({time.perf_counter() - tic:.1f} s): '
              + ', '.join(f'{k}={record[k]:.4g}' for k in FIELDS[3:]
                          if isinstance(record.get(k), (int, float))
                          and math.isfinite(record[k])), flush=True)
    return records


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    if args.restarts < 1:
        raise SystemExit(f"--restarts must be >= 1 (got {args.restarts})")
    if args.summarise:
        with open(args.summarise) as f:
            records = json.load(f)
        print(summarise(records, args.markdown))
        return records
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs = 2 if args.quick and args.epochs is None else args.epochs
    fit_kwargs = dict(args.fit_kwargs, **({} if epochs is None else {'epochs': epochs}))
    jobs = [(dataset, seed, args.models, args.quick, fit_kwargs, args.threads,
             args.model_kwargs, args.restarts)
            for dataset in args.datasets for seed in seeds]
    jobs.sort(key=lambda job: -LARGEST.get(job[0], 0))  # the longest jobs first
    tic = time.perf_counter()
    records: List[Dict] = []
    if args.jobs > 1:
        context = multiprocessing.get_context('spawn')
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(run_job, *job) for job in jobs]
            for future in as_completed(futures):
                records += future.result()
                if args.json:  # written as jobs finish: a killed run keeps its rows
                    _write(args.json, _ordered(records, args))
    else:
        for job in jobs:
            records += run_job(*job)
            if args.json:
                _write(args.json, _ordered(records, args))
    records = _ordered(records, args)
    print(summarise(records, args.markdown))
    print(f'total {time.perf_counter() - tic:.1f} s wall')
    return records


def _ordered(records: List[Dict], args) -> List[Dict]:
    return sorted(records, key=lambda r: (args.datasets.index(r['dataset']), r['seed'],
                                          args.models.index(r['model'])))


def _write(path: str, records: List[Dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(records, f, indent=1)
    os.replace(path + '.tmp', path)


if __name__ == '__main__':
    main()
