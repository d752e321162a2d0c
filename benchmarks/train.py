r"""One training epoch over spatial tiles of the standard tissue: cells per second.

The standard tissue of DESIGN.md section 6 (``--cells``) gets synthetic
trajectories (``--times`` time points of a smooth decay of its expression), is
cut into tiles of side ``--tile-size`` with a one-hop clamped halo, and
:func:`torch_staged.train.fit` runs one epoch over the tiles: one optimiser step
per (tile, window), ``--loss`` (default ``one_step``), ``--method`` with
``--step-size`` for fixed-step solvers. Reported: the epoch's wall time, cells
per second (tissue cells x one epoch / seconds), optimiser steps, NFE and peak
memory. One untimed epoch over the first tile warms up first.

    python benchmarks/train.py --cells 10000 --tile-size 50 --json train_cpu.json
    python benchmarks/train.py --device cuda --cells 100000 1000000 --tile-size 300

Every size runs in its own process (honest CPU peak memory).
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--cells', type=int, nargs='+', default=[10000])
    parser.add_argument('--tile-size', type=float, default=50.0,
                        help='tile side (density 1: about side^2 interior cells)')
    parser.add_argument('--tiles-per-step', type=int, default=1)
    parser.add_argument('--genes', type=int, default=50)
    parser.add_argument('--k', type=int, default=8)
    parser.add_argument('--lr-pairs', type=int, default=10)
    parser.add_argument('--hidden', type=int, default=16)
    parser.add_argument('--heads', type=int, default=1)
    parser.add_argument('--times', type=int, default=5, help='observed time points')
    parser.add_argument('--loss', default='one_step',
                        choices=('one_step', 'window', 'rollout'))
    parser.add_argument('--method', default='rk4')
    parser.add_argument('--step-size', type=float, default=0.25,
                        help='for fixed-step methods (0: adaptive defaults)')
    parser.add_argument('--adjoint', action='store_true')
    parser.add_argument('--runs', type=int, default=1, help='timed epochs (median)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--timeout', type=float, default=3600)
    parser.add_argument('--in-process', action='store_true',
                        help='measure in this process (faster start, less honest CPU '
                             'peak memory)')
    parser.add_argument('--json', metavar='PATH')
    parser.add_argument('--single', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--single-out', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args, num_cells: int) -> dict:
    from torch_staged.data import tile
    from torch_staged.models import STAGED
    from torch_staged.train import fit

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tic = time.perf_counter()
    data = _common.standard_tissue(num_cells, args.genes, k=args.k,
                                   num_pairs=args.lr_pairs)
    t = torch.linspace(0.0, 1.0, args.times)
    x0 = data['gene'].x[:, 0].view(num_cells, args.genes)
    X = x0.unsqueeze(0) * torch.exp(-t).view(-1, 1, 1) + 0.1 * torch.sin(t).view(-1, 1, 1)
    data.set_trajectories(X, t, cell_order='graph')
    build = time.perf_counter() - tic
    tic = time.perf_counter()
    tiles = tile(data, args.tile_size)
    seconds_tile = time.perf_counter() - tic
    del data, X
    options = {'step_size': args.step_size} if args.step_size else None
    model = STAGED(args.genes, 3, hidden_channels=args.hidden, heads=args.heads,
                   method=args.method, options=options, adjoint=args.adjoint)
    kwargs = dict(loss=args.loss, holdout=None, scheduler=None, patience=None,
                  restore_best=False, progress=False, device=device,
                  tiles_per_step=args.tiles_per_step)
    fit(model, tiles[:1], epochs=1, **kwargs)  # warm-up
    history = []

    def epoch():
        history.append(fit(model, tiles, epochs=1, **kwargs).history[-1])

    median, std = _common.timeit(epoch, runs=args.runs, warmup=0, device=device)
    mem = _common.peak_memory(epoch, device)
    windows = {'one_step': args.times - 1, 'window': math.ceil((args.times - 1) / 4),
               'rollout': 1}[args.loss]
    return dict(cells=num_cells, device=str(device), tiles=len(tiles),
                tile_cells_with_halo=sum(s.num_cells for s in tiles) / len(tiles),
                seconds_build=build, seconds_tile=seconds_tile,
                seconds_epoch=median, seconds_std=std,
                cells_per_second=num_cells / median,
                steps=math.ceil(len(tiles) / args.tiles_per_step) * windows,
                nfe=history[-1]['nfe'], train_loss=history[-1]['train_loss'],
                peak_mem_bytes=mem['peak_bytes'], memory_method=mem['method'],
                loss=args.loss, method=args.method, step_size=args.step_size)


def main(argv=None):
    args = parse_args(argv)
    if args.single is not None:
        rec = measure(args, args.single)
        with open(args.single_out, 'w') as f:
            json.dump(rec, f)
        return
    raw = sys.argv[1:] if argv is None else list(argv)
    child, skip = [], False
    for a in raw:  # drop --cells / --json and their values
        if a in ('--cells', '--json'):
            skip = True
            continue
        if skip and not a.startswith('--'):
            continue
        skip = False
        child.append(a)
    records = []
    for n in args.cells:
        if args.in_process:
            rec = measure(args, n)
        else:
            rec = _common.run_isolated([os.path.abspath(__file__), *child, '--single',
                                        str(n)], timeout=args.timeout)
        rec.setdefault('cells', n)
        records.append(rec)
    columns = [
        ('cells', 'cells', lambda v: f'{v:,}'),
        ('tiles', 'tiles', str),
        ('cells/tile+halo', 'tile_cells_with_halo', lambda v: f'{v:.0f}'),
        ('steps', 'steps', str),
        ('nfe', 'nfe', str),
        ('epoch s', 'seconds_epoch', lambda v: f'{v:.1f}'),
        ('cells/s', 'cells_per_second', lambda v: f'{v:,.0f}'),
        ('peak MiB', 'peak_mem_bytes', lambda v: f'{v / _common.MiB:.0f}'),
        ('skipped', 'skipped', str),
    ]
    print(_common.format_table(records, columns))
    if args.json:
        _common.write_json(args.json, {'machine': _common.machine_info(args.device),
                                       'args': vars(args), 'records': records})
    return records


if __name__ == '__main__':
    main()
