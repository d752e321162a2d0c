"""Time, NFE and peak memory of the STAGED vector field, one solve and one training step.

For each tissue size (the standard tissue of DESIGN.md section 6) it measures:

* ``rhs_fwd``      one evaluation of the vector field f(t, x);
* ``rhs_fwd_bwd``  f(t, x) and the backward pass of f.sum() to x and all parameters;
* ``solve``        one forward solve over ``t = [0, --horizon]`` (NFE reported);
* ``train_step``   one optimiser step of the one-step loss over ``[0, --horizon]``
                   (forward solve, backward through the solver or the adjoint, Adam step).

Times are wall-clock medians; the RHS forward + backward also reports its
median process CPU time. ``--compile`` compiles the vector field
(:meth:`STAGEDODEFunc.compile_field`; compilation is timed separately as
``seconds_compile``). The research code's own shape::

    python benchmarks/ode.py --cells 100 --genes 428 --k 6 --lr-pairs 3 --threads 1 \
        --runs 20 [--compile]

    python benchmarks/ode.py --cells 1000 10000 100000 --json results/ode_cpu.json
    python benchmarks/ode.py --device cuda --cells 1000 10000 100000 1000000

Each size runs in its own process (honest CPU peak memory; an out-of-memory only
loses that size).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

from torch_staged.models import STAGED  # noqa: E402


def _measure(args, num_cells: int) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = _common.standard_tissue(num_cells, args.genes, k=args.k,
                                   num_pairs=args.lr_pairs).to(device)
    options = {'step_size': args.step_size} if args.step_size else None
    model = STAGED(args.genes, 3, hidden_channels=args.hidden, heads=args.heads,
                   method=args.method, rtol=args.rtol, atol=args.atol, options=options,
                   adjoint=args.adjoint).to(device)
    func = model.func.set_graph(data)
    if args.compile:
        func.compile_field()
    x0 = data['gene'].x[:, :1].contiguous()
    t0 = torch.zeros((), device=device)
    t = torch.tensor([0.0, args.horizon], device=device)
    target = (x0 * 0.9).view(1, num_cells, args.genes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = dict(cells=num_cells, genes=args.genes, k=args.k, lr_pairs=args.lr_pairs,
               method=args.method, adjoint=args.adjoint, device=str(device),
               edges=data.edge_counts())

    def rhs_fwd():
        with torch.no_grad():
            func(t0, x0)

    def rhs_fwd_bwd():
        x = x0.detach().requires_grad_()
        func(t0, x).sum().backward()

    def solve():
        with torch.no_grad():
            model.integrate(x0, t)

    def train_step():
        opt.zero_grad(set_to_none=True)
        pred = model(data, t, x0.view(num_cells, args.genes))[1:]
        torch.nn.functional.mse_loss(pred, target).backward()
        opt.step()

    if args.compile:  # compilation is not part of the timings
        tic = time.perf_counter()
        rhs_fwd_bwd()
        rec['seconds_compile'] = time.perf_counter() - tic
    warmup = 2 if args.compile else 1
    for name, fn in (('rhs_fwd', rhs_fwd), ('rhs_fwd_bwd', rhs_fwd_bwd),
                     ('solve', solve), ('train_step', train_step)):
        try:
            runs = args.runs if name.startswith('rhs') else args.solve_runs
            model.reset_nfe()
            stats = _common.timeit_stats(fn, runs=runs, warmup=warmup, device=device)
            nfe = model.nfe / (runs + warmup)
            mem = _common.peak_memory(fn, device)
            rec[name] = dict(seconds=stats['median'], seconds_std=stats['std'],
                             cpu_seconds=stats['cpu_median'], nfe=nfe,
                             peak_mem_bytes=mem['peak_bytes'],
                             memory_method=mem['method'])
        except (RuntimeError, MemoryError) as err:
            if not _common.is_out_of_memory(err):
                raise
            rec[name] = dict(skipped=f'out of memory: {str(err).splitlines()[0]}')
    return rec


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cells', type=int, nargs='+', default=[1000, 10000, 100000])
    parser.add_argument('--genes', type=int, default=50)
    parser.add_argument('--k', type=int, default=8)
    parser.add_argument('--lr-pairs', type=int, default=10)
    parser.add_argument('--hidden', type=int, default=16)
    parser.add_argument('--heads', type=int, default=1)
    parser.add_argument('--method', default='dopri5')
    parser.add_argument('--rtol', type=float, default=1e-3)
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--step-size', type=float, default=None,
                        help='for fixed-step methods (rk4, euler, ...)')
    parser.add_argument('--horizon', type=float, default=1.0)
    parser.add_argument('--adjoint', action='store_true')
    parser.add_argument('--runs', type=int, default=5, help='runs of the RHS timings')
    parser.add_argument('--solve-runs', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--timeout', type=float, default=1800)
    parser.add_argument('--compile', action='store_true',
                        help='compile the vector field (STAGEDODEFunc.compile_field)')
    parser.add_argument('--json', default=None)
    parser.add_argument('--single', type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--single-out', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.single is not None:
        rec = _measure(args, args.single)
        with open(args.single_out, 'w') as f:
            json.dump(rec, f)
        return

    records = []
    passthrough = [a for a in sys.argv[1:]]
    # drop --cells and its values, --json and its value
    argv, skip = [], False
    for a in passthrough:
        if a in ('--cells', '--json'):
            skip = True
            continue
        if skip and not a.startswith('--'):
            continue
        skip = False
        argv.append(a)
    header = (f"{'cells':>9} {'rhs fwd':>10} {'rhs f+b':>10} {'f+b cpu':>10} "
              f"{'solve':>10} {'nfe':>5} {'train step':>11} {'peak(train)':>12}")
    print(header)
    for n in args.cells:
        rec = _common.run_isolated([os.path.abspath(__file__), *argv, '--single', str(n)],
                                   timeout=args.timeout)
        rec.setdefault('cells', n)
        records.append(rec)
        if 'skipped' in rec:
            print(f"{n:>9} skipped: {rec['skipped']}")
            continue

        def s(key, rec=rec):
            r = rec.get(key, {})
            return f"{r['seconds']:10.4f}" if 'seconds' in r else f"{'oom':>10}"
        train = rec.get('train_step', {})
        peak = train.get('peak_mem_bytes')
        cpu = rec.get('rhs_fwd_bwd', {}).get('cpu_seconds', float('nan'))
        print(f"{n:>9} {s('rhs_fwd')} {s('rhs_fwd_bwd')} {cpu:10.4f} {s('solve')} "
              f"{rec.get('solve', {}).get('nfe', float('nan')):5.0f} {s('train_step'):>11} "
              f"{(peak or 0) / 2**20:10.0f} MiB")
    if args.json:
        _common.write_json(args.json, {'machine': _common.machine_info(args.device),
                                       'args': vars(args), 'records': records})


if __name__ == '__main__':
    main()
