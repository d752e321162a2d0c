"""CPU and wall time of one training step of the default loss (gradient matching:
the vector field at every interval midpoint, forward and backward, one Adam
step), for the package's current defaults against the previous defaults, side
by side in one process (interleaved rounds), on the demo tissue
(``simulate_tissue(seed=0)``: 300 cells x 20 genes, 12 training intervals).

* ``previous``: state-dependent signed gates with a rank-4 gene-pair term, no
  value features, the native backend (the intervals are block-diagonal copies
  of the graph);
* ``default``: static gates with a free logit per gene pair, 8 value channels,
  the sparse (CSR) backend (the intervals are a batch of states of one graph).

    python benchmarks/fit_step.py --steps 50 --rounds 3 [--device cuda] [--json out.json]
"""
import argparse
import json
import time
from typing import Dict

import torch

from torch_staged._allocator import tune_allocator
from torch_staged._benchmark import make_task
from torch_staged.models import make_model
from torch_staged.train import fit

CONFIGS: Dict[str, Dict] = {
    'previous': dict(score_state=True, pair_dim=4, value_channels=0,
                     value_embedding=True, backend='native'),
    'default': {},
}


def _time_steps(name: str, task, steps: int, device: str) -> Dict[str, float]:
    torch.manual_seed(0)
    data = task.data
    model = make_model('staged', data.num_genes, data.num_cell_types, **CONFIGS[name])
    X, t = task.X[:task.last + 1], task.t[:task.last + 1]
    fit(model, data, X, t, cell_order='graph', epochs=2, holdout=None, progress=False,
        device=device)  # warm-up: caches, allocator
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    cpu, wall = time.process_time(), time.perf_counter()
    fit(model, data, X, t, cell_order='graph', epochs=steps, holdout=None,
        progress=False, device=device)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return dict(cpu_s=(time.process_time() - cpu) / steps,
                wall_s=(time.perf_counter() - wall) / steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=50)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--json', default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tune_allocator()
    task = make_task('staged_sim', 0)
    rows = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):  # interleaved: both see the same machine state
        for name in CONFIGS:
            rows[name].append(_time_steps(name, task, args.steps, args.device))
    best = {name: {k: min(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}
    for name, fig in best.items():
        print(f"{name:<9} CPU {fig['cpu_s'] * 1e3:7.1f} ms/step  wall "
              f"{fig['wall_s'] * 1e3:7.1f} ms/step (best of {args.rounds} x {args.steps})")
    ratio = best['previous']['cpu_s'] / best['default']['cpu_s']
    print(f"default is {ratio:.2f}x faster in CPU time")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(best=best, runs=rows, threads=args.threads,
                           device=args.device), f, indent=1)


if __name__ == '__main__':
    main()
