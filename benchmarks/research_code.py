r"""torch_staged against the approach of the research code, at the sizes it can run.

The public research code behind the paper builds one small graph per cell in
Python (NetworkX) inside every evaluation of the ODE right-hand side and runs a
GAT layer on each. To avoid copying unlicensed code, this script times its own
stand-in of that approach, on the standard tissue (DESIGN.md section 6):

* ``per_cell_graph`` -- at every RHS evaluation, for every cell: a
  ``networkx.DiGraph`` of its G genes (the cell type's GRN edges) plus one node
  per (neighbour, ligand) feeding the receptor gene; relabel to an
  ``edge_index``, gather node features, run a ``torch_geometric.nn.GATConv``
  (one layer shared by all cell types, as in the research code) and a linear
  read-out. (Plain Python dicts are used if NetworkX is not installed.)
* ``dense_reference`` -- :func:`torch_staged.testing.dense_staged_conv`, the
  dense per-cell reference of :class:`~torch_staged.nn.STAGEDConv` (a Python
  loop over cells, no graph rebuilding, the same layer as torch_staged; one
  run, up to ``--dense-max-cells``: it scans all edges per cell, so it is
  quadratic in N and slower than the research-code stand-in);
* ``staged`` -- :class:`~torch_staged.nn.STAGEDODEFunc`, the whole tissue in one
  fused sparse pass (graph fused once, outside the timing), forward only and
  forward + backward.

Reported: seconds per RHS evaluation (median of ``--runs``) and the speedup of
``staged`` over each per-cell approach.

    python benchmarks/research_code.py --cells 50 100 200 400 --json research_cpu.json
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

try:
    import networkx as nx
except ImportError:  # pragma: no cover
    nx = None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'),
                        help='device of the tensors (the per-cell loops stay in Python)')
    parser.add_argument('--cells', type=int, nargs='+', default=[50, 100, 200, 400])
    parser.add_argument('--genes', type=int, default=50)
    parser.add_argument('--k', type=int, default=8)
    parser.add_argument('--lr-pairs', type=int, default=10)
    parser.add_argument('--hidden', type=int, default=16)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--dense-max-cells', type=int, default=100,
                        help='run the dense reference (its per-cell edge scans make it '
                             'quadratic in N) only up to this size')
    parser.add_argument('--quick', action='store_true', help='sizes 20 and 40, 1 run')
    parser.add_argument('--json', metavar='PATH')
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.runs, args.warmup = [20, 40], 1, 0
    return args


class PerCellGraphRHS(torch.nn.Module):
    """The research-code approach: a graph per cell, rebuilt at every call."""

    def __init__(self, data, hidden: int):
        from torch_geometric.nn import GATConv

        super().__init__()
        G = data.num_genes
        self.num_genes = G
        gene_of = {g: i for i, g in enumerate(data.gene_names)}
        self.pairs = [(gene_of[a], gene_of[b]) for a, b in data.lr_pairs]
        reg = data['gene', 'regulates', 'gene'].edge_index
        cell = torch.div(reg[1], G, rounding_mode='floor')
        cell_type = data['cell'].cell_type
        self.cell_type = cell_type.tolist()
        # the prior GRN of each cell type (read off the first cell of the type),
        # as (source gene, target gene) lists
        first = {}
        for c, tau in enumerate(self.cell_type):
            first.setdefault(tau, c)
        self.grn = {tau: [] for tau in first}
        for c, s, t in zip(cell.tolist(), (reg[0] % G).tolist(), (reg[1] % G).tolist()):
            if first[self.cell_type[c]] == c:
                self.grn[self.cell_type[c]].append((s, t))
        near = data['cell', 'near', 'cell'].edge_index
        self.neighbours = [[] for _ in range(data.num_cells)]
        for j, i in near.t().tolist():
            self.neighbours[i].append(j)
        self.gat = GATConv(1, hidden, add_self_loops=False)
        self.readout = torch.nn.Linear(hidden, 1)
        self.decay = torch.nn.Parameter(torch.zeros(G))

    def _graph(self, c: int):
        """Node list and edge list of cell ``c``'s graph (NetworkX when present)."""
        G = self.num_genes
        if nx is not None:
            g = nx.DiGraph()
            g.add_nodes_from(('gene', a) for a in range(G))
            g.add_edges_from((('gene', s), ('gene', t)) for s, t in self.grn[
                self.cell_type[c]])
            for j in self.neighbours[c]:
                for lig, rec in self.pairs:
                    g.add_edge(('ligand', j, lig), ('gene', rec))
            nodes = list(g.nodes)
            index = {n: i for i, n in enumerate(nodes)}
            edges = [(index[u], index[v]) for u, v in g.edges]
            return nodes, edges
        nodes = [('gene', a) for a in range(G)]
        edges = list(self.grn[self.cell_type[c]])
        for j in self.neighbours[c]:
            for lig, rec in self.pairs:
                edges.append((len(nodes), rec))
                nodes.append(('ligand', j, lig))
        return nodes, edges

    def forward(self, t, x):
        G = self.num_genes
        state = x.view(-1, G)
        out = []
        for c in range(state.size(0)):
            nodes, edges = self._graph(c)  # rebuilt at every evaluation
            rows = torch.tensor([c if n[0] == 'gene' else n[1] for n in nodes])
            cols = torch.tensor([n[1] if n[0] == 'gene' else n[2] for n in nodes])
            feats = state[rows.to(x.device), cols.to(x.device)].unsqueeze(-1)
            edge_index = torch.tensor(edges, dtype=torch.long).t().to(x.device)
            h = torch.relu(self.gat(feats, edge_index))[:G]
            out.append(self.readout(h).view(G) - torch.nn.functional.softplus(
                self.decay) * state[c])
        return torch.stack(out).view(-1, 1)


def measure(args, n: int, device) -> dict:
    from torch_staged.models import STAGED
    from torch_staged.testing import dense_staged_conv

    data = _common.standard_tissue(n, args.genes, k=args.k, num_pairs=args.lr_pairs)
    data = data.to(device)
    x = data['gene'].x[:, :1].contiguous()
    t0 = torch.zeros((), device=device)
    rec = dict(cells=n, edges=data.edge_counts())

    research = PerCellGraphRHS(data.cpu() if device.type != 'cpu' else data,
                               args.hidden).to(device)
    with torch.no_grad():
        rec['per_cell_graph'] = _common.timeit(lambda: research(t0, x), args.runs,
                                               args.warmup, device)[0]

    model = STAGED(args.genes, 3, hidden_channels=args.hidden).to(device)
    func = model.func.set_graph(data)
    with torch.no_grad():
        if n <= args.dense_max_cells:
            rec['dense_reference'] = _common.timeit(
                lambda: dense_staged_conv(func.conv, x, data), 1, 0, device)[0]
        rec['staged'] = _common.timeit(lambda: func(t0, x), args.runs,
                                       args.warmup, device)[0]

    def fwd_bwd():
        xx = x.detach().requires_grad_()
        func(t0, xx).sum().backward()

    rec['staged_fwd_bwd'] = _common.timeit(fwd_bwd, args.runs, args.warmup,
                                           device)[0]
    rec['speedup_vs_per_cell_graph'] = rec['per_cell_graph'] / rec['staged']
    if 'dense_reference' in rec:
        rec['speedup_vs_dense_reference'] = rec['dense_reference'] / rec['staged']
    return rec


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    records = []
    for n in args.cells:
        rec = measure(args, n, device)
        records.append(rec)
        print(f"{n} cells done", file=sys.stderr)

    columns = [
        ('cells', 'cells', str),
        ('per-cell graph s', 'per_cell_graph', lambda v: f'{v:.4f}'),
        ('dense ref s', 'dense_reference', lambda v: f'{v:.4f}'),
        ('staged fwd s', 'staged', lambda v: f'{v:.5f}'),
        ('staged f+b s', 'staged_fwd_bwd', lambda v: f'{v:.5f}'),
        ('x vs per-cell graph', 'speedup_vs_per_cell_graph', lambda v: f'{v:.0f}'),
        ('x vs dense ref', 'speedup_vs_dense_reference', lambda v: f'{v:.0f}'),
    ]
    print(_common.format_table(records, columns))
    if args.json:
        _common.write_json(args.json, {'machine': _common.machine_info(args.device),
                                       'args': vars(args), 'records': records,
                                       'networkx': getattr(nx, '__version__', None)})
    return records


if __name__ == '__main__':
    main()
