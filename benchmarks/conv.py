r"""Time and peak memory of one :class:`STAGEDConv` pass, forward and backward.

Implementations, on the standard benchmark tissue of DESIGN.md section 6:

* ``staged`` -- :class:`torch_staged.nn.STAGEDConv` (GAT-style scores), called
  as ``conv(x, fused)`` with ``fused = conv.fuse_graph(data)`` built once
  (its time is reported separately as ``seconds_fuse``);
* ``staged_gatv2`` -- the same layer with ``attention='gatv2'``;
* ``staged_sparse`` -- ``staged`` with ``backend='sparse'`` (the aggregation as
  CSR sparse x dense products, one ``torch.library`` op);
* ``staged_default`` -- the layer as :class:`~torch_staged.models.STAGED` builds
  it by default: static signed gates, a free logit per gene pair, 8 value
  channels without embeddings, ``backend='sparse'``;
* ``staged_default_pytorch`` -- ``staged_default`` without the compiled CPU
  kernels (``use_cpp_kernels(False)``: MKL sparse products and a loop over the
  cell types, the fallback of a machine without a C++ compiler);
* ``staged_default_triton`` -- ``staged_default`` with the Triton kernels of the
  aggregation (``TORCH_STAGED_TRITON=1``; CUDA only, else the same as
  ``staged_default``);
* ``heteroconv_gat`` -- a ``HeteroConv`` of two ``GATConv`` layers: the
  like-for-like baseline of the GAT-style score;
* ``heteroconv`` -- what a PyG user would write: a ``HeteroConv`` of two
  ``GATv2Conv`` layers (one per gene -> gene relation) on ``[x || gene
  embedding]``, outputs concatenated. It has no per-cell-type weights, so it
  does less work by design;
* ``dense`` -- :func:`torch_staged.testing.dense_staged_conv`, the per-cell
  dense reference (small tissues only).

Every (implementation, size) runs in a fresh Python process (see
``_common.run_isolated``), so that peak memory is measured per configuration
and an out-of-memory failure only skips that configuration.

Example::

    python benchmarks/conv.py --cells 1000 10000 100000 --runs 3 --json conv.json
"""
import argparse
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    MiB,
    default_memory_limit,
    format_table,
    is_out_of_memory,
    limit_address_space,
    machine_info,
    peak_memory,
    run_isolated,
    standard_tissue,
    synchronize,
    tensor_bytes,
    timeit_stats,
    write_json,
)

IMPLS = ('staged', 'staged_gatv2', 'staged_sparse', 'staged_default',
         'staged_default_pytorch', 'staged_default_triton', 'heteroconv_gat',
         'heteroconv', 'dense')
STAGED_IMPLS = ('staged', 'staged_gatv2', 'staged_sparse', 'staged_default',
                'staged_default_pytorch', 'staged_default_triton')
#: STAGEDConv options of each STAGED implementation
STAGED_OPTIONS = {
    'staged': {}, 'staged_gatv2': dict(attention='gatv2'),
    'staged_sparse': dict(backend='sparse'),
    'staged_default': dict(normalize='gate', score_state=False, pair_dim='full',
                           value_channels=8, value_embedding=False, backend='sparse'),
    'staged_default_pytorch': dict(normalize='gate', score_state=False, pair_dim='full',
                                   value_channels=8, value_embedding=False,
                                   backend='sparse'),
    'staged_default_triton': dict(normalize='gate', score_state=False, pair_dim='full',
                                  value_channels=8, value_embedding=False,
                                  backend='sparse'),
    'dense': {},
}
NUM_CELL_TYPES = 3
GENE_DIM = 8  # STAGEDConv's default gene embedding size


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--cells', type=int, nargs='+', default=[1000, 10000, 100000],
                        help='tissue sizes N (number of cells)')
    parser.add_argument('--genes', type=int, default=50, help='gene panel size G')
    parser.add_argument('--k', type=int, default=8, help='kNN neighbours per cell')
    parser.add_argument('--lr-pairs', type=int, default=10,
                        help='ligand -> receptor pairs L')
    parser.add_argument('--regulators', type=int, default=5,
                        help='GRN regulators per gene per cell type')
    parser.add_argument('--heads', type=int, default=1)
    parser.add_argument('--hidden', type=int, default=16,
                        help='out_channels per head of every implementation')
    parser.add_argument('--runs', type=int, default=5, help='timed runs (median)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs first')
    parser.add_argument('--size-runs', nargs='+', default=[], metavar='CELLS:RUNS:WARMUP',
                        help='override --runs / --warmup at some sizes, e.g. '
                             '100000:1:1')
    parser.add_argument('--dense-runs', type=int, default=1,
                        help='timed runs of the (very slow) dense reference')
    parser.add_argument('--dense-warmup', type=int, default=0,
                        help='untimed runs of the dense reference')
    parser.add_argument('--backward', action=argparse.BooleanOptionalAction,
                        default=True,
                        help='also time forward + backward (of out.sum() w.r.t. '
                             'the parameters and x)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the STAGEDConv layers')
    parser.add_argument('--impl', nargs='+', default=list(IMPLS), choices=IMPLS)
    parser.add_argument('--heteroconv-aggr', default='cat', choices=('cat', 'sum'),
                        help="HeteroConv's aggregation of the two relations")
    parser.add_argument('--dense-max-cells', type=int, default=2000,
                        help='run the dense reference only up to this many cells')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch.set_num_threads in every configuration')
    parser.add_argument('--mem-limit-gb', type=float, default=None,
                        help='CPU only: cap the address space of each configuration '
                             'so that running out of memory raises instead of '
                             'calling the OOM killer (default: 80%% of the memory '
                             'available at start; 0 disables)')
    parser.add_argument('--timeout', type=float, default=3600,
                        help='seconds after which a configuration is abandoned')
    parser.add_argument('--profile', action='store_true',
                        help='profile one forward + backward of the STAGEDConv '
                             'implementations with torch.profiler (top ops to '
                             'stderr and into the record)')
    parser.add_argument('--thp', action='store_true',
                        help='CPU: run every configuration with THP_MEM_ALLOC_ENABLE=1 '
                             '(PyTorch backs large tensors with transparent huge '
                             'pages: far fewer page faults on fresh memory)')
    parser.add_argument('--heap', action='store_true',
                        help='CPU: run every configuration after '
                             'torch_staged.train.tune_allocator(large=True) (freed '
                             'memory of every size kept for reuse: no fresh pages '
                             'once the heap has grown, more peak memory)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', metavar='PATH', help='write the results here')
    # internal: one configuration in this process
    parser.add_argument('--single', choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument('--single-out', help=argparse.SUPPRESS)
    parser.add_argument('--mem-limit-bytes', type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- models
class HeteroConvBaseline(torch.nn.Module):
    """``HeteroConv`` of one ``GATv2Conv`` per gene -> gene relation on
    ``h = [x || gene embedding]`` (regulates edges get zero edge attributes, so
    both layers take ``edge_dim=1``).
    """

    def __init__(self, in_channels, out_channels, num_genes, heads=1,
                 gene_dim=GENE_DIM, aggr='cat', layer='gatv2'):
        from torch_geometric.nn import GATConv, GATv2Conv, HeteroConv

        from torch_staged.typing import RELATIONS

        super().__init__()
        self.gene_emb = torch.nn.Embedding(num_genes, gene_dim)
        dim = in_channels + gene_dim
        cls = GATv2Conv if layer == 'gatv2' else GATConv
        self.conv = HeteroConv({
            rel: cls((dim, dim), out_channels, heads=heads, edge_dim=1,
                     add_self_loops=False)
            for rel in RELATIONS
        }, aggr=aggr)

    def forward(self, x, gene, edge_index_dict, edge_attr_dict):
        h = torch.cat([x, self.gene_emb(gene)], dim=-1)
        return self.conv({'gene': h}, edge_index_dict,
                         edge_attr_dict=edge_attr_dict)['gene']


def build_config(args, impl, data, x, device):
    """Returns ``(forward callable, parameters, extra record fields)``."""
    from torch_staged.nn import STAGEDConv, _cpp
    from torch_staged.typing import GENE, REGULATES, RELATIONS, SIGNALS
    extra = {'cpp_kernels': _cpp.use_cpp_kernels(impl != 'staged_default_pytorch')}
    if impl == 'staged_default_triton':  # this configuration's own process
        os.environ['TORCH_STAGED_TRITON'] = '1'
        extra['triton'] = True
    if impl in STAGED_IMPLS or impl == 'dense':
        conv = STAGEDConv(1, args.hidden, num_genes=args.genes,
                          num_cell_types=NUM_CELL_TYPES, heads=args.heads,
                          **STAGED_OPTIONS[impl])
        conv = conv.to(device)
        params = list(conv.parameters())
        if impl == 'dense':
            from torch_staged.testing import dense_staged_conv
            extra['graph_bytes'] = tensor_bytes(
                [data[rel].edge_index for rel in data.edge_types],
                [data[rel].edge_attr for rel in data.edge_types
                 if 'edge_attr' in data[rel]])
            return (lambda: dense_staged_conv(conv, x, data)[0]), params, extra

        synchronize(device)
        start = time.perf_counter()
        fused = conv.fuse_graph(data)
        synchronize(device)
        extra['seconds_fuse'] = time.perf_counter() - start
        extra['graph_bytes'] = tensor_bytes(tuple(fused))
        layer = conv
        if args.compile:
            layer = torch.compile(conv)
            extra['compiled'] = True
        return (lambda: layer(x, fused)), params, extra

    model = HeteroConvBaseline(1, args.hidden, args.genes, heads=args.heads,
                               aggr=args.heteroconv_aggr,
                               layer='gat' if impl == 'heteroconv_gat' else 'gatv2').to(device)
    edge_index_dict = {rel: data[rel].edge_index for rel in RELATIONS}
    reg = data[REGULATES].edge_index
    edge_attr_dict = {
        REGULATES: torch.zeros(reg.size(1), 1, device=device, dtype=x.dtype),
        SIGNALS: data[SIGNALS].edge_attr.to(x.dtype),
    }
    gene = data[GENE].gene
    extra['graph_bytes'] = tensor_bytes(edge_index_dict, edge_attr_dict)
    return ((lambda: model(x, gene, edge_index_dict, edge_attr_dict)),
            list(model.parameters()), extra)


def profile_top_ops(fn, device, row_limit=15):
    """Top ops of one call of :obj:`fn` by self time (printed, and returned)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.device(device).type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    cuda = torch.device(device).type == 'cuda'
    sort_by = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
    averages = prof.key_averages()
    print(averages.table(sort_by=sort_by, row_limit=row_limit), file=sys.stderr)
    rows = sorted(averages, key=lambda e: (e.self_device_time_total if cuda
                                           else e.self_cpu_time_total), reverse=True)
    total = sum(e.self_cpu_time_total for e in averages)
    return [{'op': e.key, 'calls': e.count,
             'self_cpu_s': e.self_cpu_time_total / 1e6,
             'self_cpu_share': (e.self_cpu_time_total / total) if total else None,
             **({'self_cuda_s': e.self_device_time_total / 1e6} if cuda else {})}
            for e in rows[:row_limit]]


def run_single(args):
    """Measures one (implementation, size) in this process; returns its record."""
    from torch_staged.train import tune_allocator
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cpu':
        limit_address_space(args.mem_limit_bytes)
    impl, cells = args.single, args.cells[0]
    name = impl + ('+compile' if args.compile and impl in STAGED_IMPLS else '')
    record = {'impl': name, 'cells': cells, 'genes': args.genes, 'k': args.k,
              'lr_pairs': args.lr_pairs, 'heads': args.heads, 'hidden': args.hidden,
              'device': str(device), 'threads': args.threads, 'runs': args.runs,
              'warmup': args.warmup, 'loadavg_before': os.getloadavg()[0],
              'thp_mem_alloc': os.environ.get('THP_MEM_ALLOC_ENABLE') == '1',
              'heap_allocator': args.heap and tune_allocator(large=True)}  # first
    try:
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        data = standard_tissue(cells, args.genes, NUM_CELL_TYPES, args.k,
                               args.lr_pairs, args.regulators, seed=args.seed)
        record['seconds_build'] = time.perf_counter() - start
        from torch_staged.typing import GENE, REGULATES, SIGNALS
        record['edges_in'] = data[REGULATES].edge_index.size(1)
        record['edges_out'] = data[SIGNALS].edge_index.size(1)
        data = data.to(device)
        x = data[GENE].x.clone().requires_grad_(True)
        forward, params, extra = build_config(args, impl, data, x, device)
        record.update(extra)
        inputs = [x] + [p for p in params if p.requires_grad]

        def forward_backward():
            out = forward()
            return torch.autograd.grad(out.sum(), inputs, allow_unused=True)

        if args.compile and impl in STAGED_IMPLS:
            synchronize(device)
            start = time.perf_counter()
            (forward_backward if args.backward else forward)()
            synchronize(device)
            record['seconds_compile'] = time.perf_counter() - start

        print(f'[{name} N={cells}] forward', file=sys.stderr, flush=True)
        stats = timeit_stats(forward, args.runs, args.warmup, device)
        record['seconds_fwd'], record['seconds_fwd_std'] = stats['median'], stats['std']
        record['cpu_seconds_fwd'], record['times_fwd'] = stats['cpu_median'], stats['times']
        measured = forward
        if args.backward:
            print(f'[{name} N={cells}] forward + backward', file=sys.stderr,
                  flush=True)
            stats = timeit_stats(forward_backward, args.runs, args.warmup, device)
            record['seconds_fwd_bwd'] = stats['median']
            record['seconds_fwd_bwd_std'] = stats['std']
            record['cpu_seconds_fwd_bwd'] = stats['cpu_median']
            record['times_fwd_bwd'] = stats['times']
            measured = forward_backward
        mem = peak_memory(measured, device)
        record['peak_mem_bytes'] = mem['peak_bytes']
        record['peak_mem_of'] = 'fwd+bwd' if args.backward else 'fwd'
        record['mem_baseline_bytes'] = mem['baseline_bytes']
        record['mem_method'] = mem['method']
        if args.profile and impl in STAGED_IMPLS:
            record['profile_top'] = profile_top_ops(measured, device)
        record['loadavg_after'] = os.getloadavg()[0]
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            traceback.print_exc()
            record['skipped'] = f'error: {type(err).__name__}: {str(err)[:300]}'
        else:
            record['skipped'] = f'out of memory: {str(err).splitlines()[0][:200]}'
    except Exception as err:  # a package bug must not cost the other configurations
        traceback.print_exc()
        record['skipped'] = f'error: {type(err).__name__}: {str(err)[:300]}'
    return record


# --------------------------------------------------------------------------- driver
def runs_for(args, impl, cells):
    """``(runs, warmup)`` of one configuration."""
    runs, warmup = args.runs, args.warmup
    for spec in args.size_runs:
        try:
            size, size_runs, size_warmup = (int(v) for v in spec.split(':'))
        except ValueError:
            raise SystemExit(f"--size-runs expects CELLS:RUNS:WARMUP (got '{spec}')"
                             ) from None
        if size == cells:
            runs, warmup = size_runs, size_warmup
    if impl == 'dense':
        runs, warmup = min(runs, args.dense_runs), min(warmup, args.dense_warmup)
    return runs, warmup


def child_argv(args, impl, cells, mem_limit):
    runs, warmup = runs_for(args, impl, cells)
    argv = [os.path.abspath(__file__), '--single', impl, '--cells', str(cells),
            '--device', args.device, '--genes', str(args.genes), '--k', str(args.k),
            '--lr-pairs', str(args.lr_pairs), '--regulators', str(args.regulators),
            '--heads', str(args.heads), '--hidden', str(args.hidden),
            '--runs', str(runs), '--warmup', str(warmup),
            '--threads', str(args.threads), '--seed', str(args.seed),
            '--heteroconv-aggr', args.heteroconv_aggr,
            '--backward' if args.backward else '--no-backward']
    if args.compile:
        argv.append('--compile')
    if args.profile:
        argv.append('--profile')
    if args.heap:
        argv.append('--heap')
    if mem_limit:
        argv += ['--mem-limit-bytes', str(mem_limit)]
    return argv


def add_ratios(records):
    """``speedup_vs_<base>``, ``cpu_speedup_vs_<base>`` and ``mem_ratio_vs_<base>``
    per size, for the bases ``heteroconv`` (GATv2Conv) and ``heteroconv_gat``."""
    key = 'seconds_fwd_bwd'
    for cells in {r['cells'] for r in records}:
        same = [r for r in records if r['cells'] == cells and 'skipped' not in r]
        for name in ('heteroconv', 'heteroconv_gat'):
            base = next((r for r in same if r['impl'] == name), None)
            if base is None:
                continue
            for r in same:
                k = key if r.get(key) and base.get(key) else 'seconds_fwd'
                r[f'speedup_vs_{name}'] = base[k] / r[k]
                r['speedup_of'] = 'fwd+bwd' if k == key else 'fwd'
                cpu = 'cpu_' + k
                if r.get(cpu) and base.get(cpu):
                    r[f'cpu_speedup_vs_{name}'] = base[cpu] / r[cpu]
                if r.get('peak_mem_bytes') is not None and base.get('peak_mem_bytes'):
                    r[f'mem_ratio_vs_{name}'] = (r['peak_mem_bytes']
                                                 / base['peak_mem_bytes'])


def print_table(records, file=sys.stdout):
    def ms(v):
        return f'{1e3 * v:.1f}'

    def ratio(v):
        return f'{v:.2f}x'

    rows = []
    for r in records:
        row = dict(r)
        if r.get('seconds_fwd') is not None:
            row['fwd'] = f"{ms(r['seconds_fwd'])} ± {ms(r['seconds_fwd_std'])}"
        if r.get('seconds_fwd_bwd') is not None:
            row['fwd_bwd'] = (f"{ms(r['seconds_fwd_bwd'])} ± "
                              f"{ms(r['seconds_fwd_bwd_std'])}")
        rows.append(row)
    columns = [
        ('impl', 'impl', str), ('cells', 'cells', str),
        ('E_in', 'edges_in', str), ('E_out', 'edges_out', str),
        ('fwd ms', 'fwd', str), ('fwd+bwd ms', 'fwd_bwd', str),
        ('cpu s', 'cpu_seconds_fwd_bwd', lambda v: f'{v:.2f}'),
        ('peak MiB', 'peak_mem_bytes', lambda v: f'{v / MiB:.0f}'),
        ('graph MiB', 'graph_bytes', lambda v: f'{v / MiB:.0f}'),
        ('speedup', 'speedup_vs_heteroconv', ratio),
        ('cpu speedup', 'cpu_speedup_vs_heteroconv', ratio),
        ('mem ratio', 'mem_ratio_vs_heteroconv', ratio),
        ('cpu vs GAT', 'cpu_speedup_vs_heteroconv_gat', ratio),
        ('mem vs GAT', 'mem_ratio_vs_heteroconv_gat', ratio),
        ('fuse s', 'seconds_fuse', lambda v: f'{v:.2f}'),
        ('compile s', 'seconds_compile', lambda v: f'{v:.1f}'),
        ('skipped', 'skipped', lambda v: v[:60]),
    ]
    print(format_table(rows, columns), file=file, flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.single:
        record = run_single(args)
        if args.single_out:
            write_json(args.single_out, record)
        else:
            print(record)
        return 0

    torch.set_num_threads(args.threads)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: CUDA is not available')
    mem_limit = None
    if args.device == 'cpu':
        mem_limit = (default_memory_limit() if args.mem_limit_gb is None
                     else int(args.mem_limit_gb * (1 << 30)) or None)
    records = []
    for cells in args.cells:
        for impl in args.impl:
            if impl == 'dense' and cells > args.dense_max_cells:
                records.append({'impl': impl, 'cells': cells,
                                'skipped': f'cells > --dense-max-cells '
                                           f'({args.dense_max_cells})'})
                continue
            print(f'== {impl} N={cells}', file=sys.stderr, flush=True)
            start = time.perf_counter()
            record = run_isolated(child_argv(args, impl, cells, mem_limit),
                                  timeout=args.timeout,
                                  env={'THP_MEM_ALLOC_ENABLE': '1'} if args.thp else None)
            record.setdefault('impl', impl)
            record.setdefault('cells', cells)
            record['seconds_total'] = time.perf_counter() - start
            records.append(record)
            print(f'== {impl} N={cells}: done in {record["seconds_total"]:.0f} s'
                  + (f' (skipped: {record["skipped"]})' if 'skipped' in record
                     else ''), file=sys.stderr, flush=True)
    add_ratios(records)
    print_table(records)
    if args.json:
        write_json(args.json, {'benchmark': 'conv', 'machine': machine_info(args.device),
                               'config': {k: v for k, v in vars(args).items()
                                          if not k.startswith('single')
                                          and k != 'mem_limit_bytes'},
                               'mem_limit_bytes': mem_limit, 'records': records})
        print(f'wrote {args.json}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
