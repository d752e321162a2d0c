r"""Scaling sweep: time and peak memory *per cell* of one forward + backward of the
STAGED vector field, as the standard tissue (DESIGN.md section 6) grows.

Two modes per size N:

* ``whole`` -- the tissue as one graph: ``f(t, x)`` and the backward pass of
  ``f.sum()`` to ``x`` and all parameters (``--max-whole`` caps N);
* ``tiles`` -- the tissue cut into spatial tiles of side ``--tile-size`` with a
  one-hop clamped halo (:func:`torch_staged.data.tile`), the RHS forward +
  backward run tile after tile (gradients accumulate, as in a training step).
  Time is the sum over tiles, memory the peak of the whole loop (about one
  tile's). With ``--extrapolate`` sizes beyond ``--max-build`` cells are not
  built: the time of ``N / cells_per_tile`` tiles is extrapolated from the
  tiles of the largest built size (uniform density makes tiles alike), and is
  marked as such.

Flat columns ``us/cell`` and ``B/cell`` are what the sweep is meant to show.

    python benchmarks/scaling.py                                  # 1e3 .. 1e5
    python benchmarks/scaling.py --cells 1000 10000 100000 1000000 --max-whole 100000
    python benchmarks/scaling.py --device cuda --cells 1000 10000 100000 1000000
    python benchmarks/scaling.py --quick                          # smoke test

Every (size, mode) runs in its own process (honest CPU peak memory; an
out-of-memory failure only loses that configuration).
"""
import argparse
import json
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
    parser.add_argument('--cells', type=int, nargs='+', default=[1000, 10000, 100000])
    parser.add_argument('--modes', nargs='+', default=['whole', 'tiles'],
                        choices=('whole', 'tiles'))
    parser.add_argument('--max-whole', type=int, default=None,
                        help='largest N run as one graph (default: 1e5 on CPU, '
                             'no cap on CUDA)')
    parser.add_argument('--max-build', type=int, default=200000,
                        help='largest N actually built in tiles mode; larger sizes '
                             'are extrapolated when --extrapolate is given')
    parser.add_argument('--extrapolate', action='store_true')
    parser.add_argument('--tile-size', type=float, default=50.0,
                        help='tile side (position units; density 1 -> ~side^2 cells)')
    parser.add_argument('--genes', type=int, default=50)
    parser.add_argument('--k', type=int, default=8)
    parser.add_argument('--lr-pairs', type=int, default=10)
    parser.add_argument('--hidden', type=int, default=16)
    parser.add_argument('--heads', type=int, default=1)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--timeout', type=float, default=3600)
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: sizes 100 and 200, tile side 8, 1 run')
    parser.add_argument('--in-process', action='store_true',
                        help='measure in this process (faster start, less honest CPU '
                             'peak memory; implied by --quick)')
    parser.add_argument('--json', metavar='PATH')
    parser.add_argument('--single', nargs=2, metavar=('MODE', 'CELLS'),
                        help=argparse.SUPPRESS)
    parser.add_argument('--single-out', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.runs, args.warmup, args.tile_size = [100, 200], 1, 0, 8.0
        args.threads, args.in_process = 1, True
    if args.max_whole is None:
        args.max_whole = None if args.device == 'cuda' else 100000
    return args


def _model(args, device):
    from torch_staged.models import STAGED
    return STAGED(args.genes, 3, hidden_channels=args.hidden,
                  heads=args.heads).to(device)


def measure(args, mode: str, num_cells: int) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tic = time.perf_counter()
    data = _common.standard_tissue(num_cells, args.genes, k=args.k,
                                   num_pairs=args.lr_pairs)
    build = time.perf_counter() - tic
    model = _model(args, device)
    func = model.func
    t0 = torch.zeros((), device=device)
    rec = dict(mode=mode, cells=num_cells, genes=args.genes, device=str(device),
               seconds_build=build, edges=data.edge_counts())
    if mode == 'whole':
        data = data.to(device)
        func.set_graph(data)
        x0 = data['gene'].x[:, :1].contiguous()
        graphs = [(None, x0, None)]
        rec['graph_bytes'] = _common.tensor_bytes(tuple(func.graph))
    else:
        from torch_staged.data import tile
        tic = time.perf_counter()
        tiles = tile(data, args.tile_size)
        rec['seconds_tile'] = time.perf_counter() - tic
        del data
        graphs = []
        for sub in tiles:
            sub = sub.to(device)
            clamp = sub['cell'].clamped.repeat_interleave(args.genes)
            graphs.append((sub, sub['gene'].x[:, :1].contiguous(), clamp))
        rec['tiles'] = len(graphs)
        rec['cells_per_tile'] = num_cells / len(graphs)
        rec['tile_cells_with_halo'] = sum(g.num_cells for g, _, _ in graphs) / len(graphs)

    def fwd_bwd():
        for sub, x0, clamp in graphs:
            if sub is not None:
                func.set_graph(sub)
            x = x0.detach().requires_grad_()
            out = func(t0, x)
            if clamp is not None:  # halo rows do not enter a tile's loss
                out = out[~clamp]
            out.sum().backward()

    median, std = _common.timeit(fwd_bwd, runs=args.runs, warmup=args.warmup,
                                 device=device)
    mem = _common.peak_memory(fwd_bwd, device)
    rec.update(seconds=median, seconds_std=std, peak_mem_bytes=mem['peak_bytes'],
               memory_method=mem['method'],
               us_per_cell=1e6 * median / num_cells,
               bytes_per_cell=mem['peak_bytes'] / num_cells)
    if mode == 'tiles':
        # memory per cell of the tile actually in memory, the figure that stays flat
        rec['bytes_per_tile_cell'] = mem['peak_bytes'] / rec['tile_cells_with_halo']
    return rec


def _child_argv(args, mode, n):
    argv = [os.path.abspath(__file__), '--device', args.device, '--genes',
            str(args.genes), '--k', str(args.k), '--lr-pairs', str(args.lr_pairs),
            '--hidden', str(args.hidden), '--heads', str(args.heads), '--runs',
            str(args.runs), '--warmup', str(args.warmup), '--threads',
            str(args.threads), '--tile-size', str(args.tile_size),
            '--single', mode, str(n)]
    return argv


def main(argv=None):
    args = parse_args(argv)
    if args.single is not None:
        rec = measure(args, args.single[0], int(args.single[1]))
        with open(args.single_out, 'w') as f:
            json.dump(rec, f)
        return

    records = []
    biggest_tiles = None
    for n in args.cells:
        for mode in args.modes:
            if mode == 'whole' and args.max_whole is not None and n > args.max_whole:
                continue
            if mode == 'tiles' and n > args.max_build:
                if not args.extrapolate or biggest_tiles is None:
                    continue
                ref = biggest_tiles
                scale = n / ref['cells']
                rec = dict(mode='tiles (extrapolated)', cells=n,
                           seconds=ref['seconds'] * scale,
                           peak_mem_bytes=ref['peak_mem_bytes'],
                           us_per_cell=ref['us_per_cell'],
                           bytes_per_cell=ref['peak_mem_bytes'] / n,
                           bytes_per_tile_cell=ref.get('bytes_per_tile_cell'),
                           extrapolated_from=ref['cells'])
                records.append(rec)
                continue
            if args.in_process:
                rec = measure(args, mode, n)
            else:
                rec = _common.run_isolated(_child_argv(args, mode, n),
                                           timeout=args.timeout)
            rec.setdefault('cells', n)
            rec.setdefault('mode', mode)
            records.append(rec)
            if mode == 'tiles' and 'skipped' not in rec:
                biggest_tiles = rec

    columns = [
        ('cells', 'cells', lambda v: f'{v:,}'),
        ('mode', 'mode', str),
        ('tiles', 'tiles', str),
        ('f+b s', 'seconds', lambda v: f'{v:.3f}'),
        ('us/cell', 'us_per_cell', lambda v: f'{v:.2f}'),
        ('peak MiB', 'peak_mem_bytes', lambda v: f'{v / _common.MiB:.1f}'),
        ('B/cell', 'bytes_per_cell', lambda v: f'{v:,.0f}'),
        ('B/tile cell', 'bytes_per_tile_cell', lambda v: f'{v:,.0f}'),
        ('skipped', 'skipped', str),
    ]
    print(_common.format_table(records, columns))
    if args.json:
        _common.write_json(args.json, {'machine': _common.machine_info(args.device),
                                       'args': vars(args), 'records': records})
    return records


if __name__ == '__main__':
    main()
