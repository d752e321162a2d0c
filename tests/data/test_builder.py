"""Tests of :func:`torch_staged.data.build_tissue_graph`.

The builder is vectorised; here it is checked against a brute-force reference
written with explicit Python loops over cells, pairs and table rows, in the
user's (input) cell order and in gene names.
"""
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial import Delaunay
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from torch_staged.data import TissueData, build_tissue_graph
from torch_staged.typing import CELL, GENE, NEAR, REGULATES, SIGNALS

GENE_POOL = ['Tgfb1', 'Notch1', 'Dll1', 'Il6', 'Il6r', 'Tgfbr2']  # not sorted
STR_TYPES = ['T', 'B', 'Mac']


# --------------------------------------------------------------------------
# Brute-force reference (explicit loops, input cell order, gene names)
# --------------------------------------------------------------------------

def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def _dist(pos, i, j):
    total = 0.0
    for a in range(len(pos[i])):
        total += (float(pos[i][a]) - float(pos[j][a])) ** 2
    return math.sqrt(total)


def ref_near(pos, rule, k=None, radius=None, given=None, max_distance=None):
    """``{(src_cell, dst_cell): distance}`` of the neighbourhood ``src -> dst``."""
    pos = [list(map(float, row)) for row in pos]
    n = len(pos)
    edges = {}
    if rule == 'given':
        for e in range(len(given[0])):
            j, i = int(given[0][e]), int(given[1][e])
            edges[(j, i)] = _dist(pos, j, i)
    elif rule == 'knn':
        for i in range(n):
            candidates = []
            for j in range(n):
                if j != i:
                    candidates.append((_dist(pos, i, j), j))
            candidates.sort()
            for d, j in candidates[:k]:
                edges[(j, i)] = d
    elif rule == 'radius':
        for i in range(n):
            for j in range(n):
                if i != j:
                    d = _dist(pos, i, j)
                    if d <= radius:
                        edges[(j, i)] = d
    elif rule == 'delaunay':
        for simplex in Delaunay(np.asarray(pos)).simplices:
            for a in simplex:
                for b in simplex:
                    if a != b:
                        edges[(int(a), int(b))] = _dist(pos, int(a), int(b))
    else:  # pragma: no cover
        raise AssertionError(rule)
    if max_distance is not None:
        kept = {}
        for e, d in edges.items():
            if d <= max_distance:
                kept[e] = d
        edges = kept
    return edges


def ref_regulates(cell_type, genes, grn_rows):
    """``{(cell, src_gene, dst_gene)}``; ``grn_rows`` is None or a list of
    ``(source, target, cell_type or None/NaN)``."""
    out = set()
    for c, t in enumerate(cell_type):
        if grn_rows is None:
            for g1 in genes:
                for g2 in genes:
                    if g1 != g2:
                        out.add((c, g1, g2))
            continue
        for src, dst, row_type in grn_rows:
            if src not in genes or dst not in genes:
                continue
            if _missing(row_type) or row_type == t:
                out.add((c, src, dst))
    return out


def ref_signals(near, num_cells, genes, lr_rows, autocrine):
    """``{(src_cell, ligand, dst_cell, receptor): (distance, (ligand, receptor))}``."""
    if lr_rows is None:
        return {}
    pairs = []
    for lig, rec in lr_rows:
        if lig in genes and rec in genes and (lig, rec) not in pairs:
            pairs.append((lig, rec))
    senders = dict(near)
    if autocrine:
        for i in range(num_cells):
            senders[(i, i)] = 0.0
    out = {}
    for (j, i), d in senders.items():
        for lig, rec in pairs:
            out[(j, lig, i, rec)] = (d, (lig, rec))
    return out


def graph_to_input(data, genes):
    """The builder's edges mapped back to input order and gene names."""
    n_id = data[CELL].n_id.tolist()
    num_genes = len(genes)

    near = {}
    src, dst = data[NEAR].edge_index.tolist()
    dist = data[NEAR].edge_attr.view(-1).tolist()
    for s, d, w in zip(src, dst, dist):
        key = (n_id[s], n_id[d])
        assert key not in near, f'duplicated near edge {key}'
        near[key] = w

    reg = []
    src, dst = data[REGULATES].edge_index.tolist()
    for s, d in zip(src, dst):
        assert s // num_genes == d // num_genes, 'regulates edge across cells'
        reg.append((n_id[s // num_genes], genes[s % num_genes], genes[d % num_genes]))

    sig = {}
    src, dst = data[SIGNALS].edge_index.tolist()
    dist = data[SIGNALS].edge_attr.view(-1).tolist()
    pair = data[SIGNALS].lr_pair.tolist()
    for s, d, w, p in zip(src, dst, dist, pair):
        key = (n_id[s // num_genes], genes[s % num_genes],
               n_id[d // num_genes], genes[d % num_genes])
        assert key not in sig, f'duplicated signals edge {key}'
        sig[key] = (w, tuple(data.lr_pairs[p]))
    return near, reg, sig


def assert_weighted_equal(got, expected):
    assert set(got) == set(expected)
    keys = sorted(expected)
    np.testing.assert_allclose([got[k] for k in keys], [expected[k] for k in keys],
                               rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Structural checks shared by all tests
# --------------------------------------------------------------------------

def check_structure(data, pos, cell_type, genes, x=None, autocrine=False):
    assert isinstance(data, TissueData)
    data.validate(raise_on_error=True)
    num_cells, num_genes = len(pos), len(genes)
    assert data.num_cells == num_cells
    assert data.num_genes == num_genes
    assert data.gene_names == list(genes)

    n_id = data[CELL].n_id
    assert n_id.dtype == torch.long
    assert sorted(n_id.tolist()) == list(range(num_cells))

    node = torch.arange(num_cells * num_genes)
    assert torch.equal(data[GENE].cell * num_genes + data[GENE].gene, node)
    assert data[GENE].num_nodes == num_cells * num_genes

    pos_t = torch.as_tensor(np.asarray(pos, dtype=np.float64))
    torch.testing.assert_close(data[CELL].pos.double(), pos_t[n_id])

    names = data.cell_type_names
    labels = [str(t) for t in np.asarray(cell_type).tolist()]
    got_labels = [names[c] for c in data[CELL].cell_type.tolist()]
    assert got_labels == [labels[i] for i in n_id.tolist()]

    # near: distance attribute, sorted by target
    near_index = data[NEAR].edge_index
    assert near_index.dim() == 2 and near_index.size(0) == 2
    assert data[NEAR].edge_attr.shape == (near_index.size(1), 1)
    assert bool((near_index[1].diff() >= 0).all())
    pos_g = data[CELL].pos.double()
    dist = (pos_g[near_index[0]] - pos_g[near_index[1]]).norm(dim=1)
    torch.testing.assert_close(data[NEAR].edge_attr.view(-1).double(), dist,
                               rtol=1e-5, atol=1e-5)

    # gene -> gene relations sorted by target
    for rel in (REGULATES, SIGNALS):
        index = data[rel].edge_index
        assert index.dtype == torch.long
        assert bool((index[1].diff() >= 0).all()), f'{rel} not sorted by target'
        if index.numel():
            assert int(index.min()) >= 0
            assert int(index.max()) < num_cells * num_genes

    # signals: lr_pair indexes data.lr_pairs, gene ids match the pair
    sig = data[SIGNALS].edge_index
    lr_pair = data[SIGNALS].lr_pair
    num_pairs = len(data.lr_pairs)
    assert lr_pair.shape == (sig.size(1), )
    assert data[SIGNALS].edge_attr.shape == (sig.size(1), 1)
    gene_index = {g: i for i, g in enumerate(genes)}
    if sig.size(1):
        assert int(lr_pair.min()) >= 0 and int(lr_pair.max()) < num_pairs
        lig = torch.tensor([gene_index[lg] for lg, _ in data.lr_pairs])
        rec = torch.tensor([gene_index[rc] for _, rc in data.lr_pairs])
        assert torch.equal(sig[0] % num_genes, lig[lr_pair])
        assert torch.equal(sig[1] % num_genes, rec[lr_pair])
    num_senders = near_index.size(1) + (num_cells if autocrine else 0)
    assert sig.size(1) == num_senders * num_pairs

    # x in graph order, [N*G, F]
    if x is None:
        assert 'x' not in data[GENE]
    else:
        x_np = np.asarray(x, dtype=np.float64)
        if x_np.ndim == 2:
            x_np = x_np[:, :, None]
        expected = torch.from_numpy(x_np[n_id.numpy()]).reshape(
            num_cells * num_genes, -1)
        assert data[GENE].x.shape == expected.shape
        torch.testing.assert_close(data[GENE].x.double(), expected)

    # cells_to_graph / cells_to_input are inverses
    value = torch.randn(num_cells, 3)
    torch.testing.assert_close(data.cells_to_input(data.cells_to_graph(value)), value)
    torch.testing.assert_close(data.cells_to_graph(data.cells_to_input(value)), value)
    torch.testing.assert_close(data.cells_to_graph(pos_t), pos_g)
    series = torch.randn(2, num_cells, num_genes)
    torch.testing.assert_close(
        data.cells_to_input(data.cells_to_graph(series, dim=1), dim=1), series)
    torch.testing.assert_close(data.cells_to_graph(series, dim=1), series[:, n_id])


# --------------------------------------------------------------------------
# Random inputs
# --------------------------------------------------------------------------

def make_tissue(rng, n, dim, num_genes, types):
    pos = rng.uniform(0.0, 10.0, (n, dim))
    if types == 'int':
        cell_type = rng.permutation(np.arange(n) % 3).astype(np.int64)
        type_values = [0, 1, 2]
    else:
        cell_type = np.array(STR_TYPES)[rng.permutation(np.arange(n) % 3)]
        type_values = list(STR_TYPES)
    genes = list(GENE_POOL[:num_genes])
    return pos, cell_type, genes, type_values


def make_lr_rows(rng, genes, num=3):
    rows = []
    for _ in range(num):
        a, b = rng.choice(len(genes), 2, replace=False)
        rows.append((genes[a], genes[b]))
    rows.append(rows[0])  # a duplicated pair is counted once
    return rows


def make_grn_rows(rng, genes, type_values, typed, num=8):
    rows = []
    for r in range(num):
        a, b = rng.integers(0, len(genes), 2)
        if not typed or r % 3 == 0:
            row_type = None  # applies to every type
        else:
            row_type = type_values[int(rng.integers(0, len(type_values)))]
        rows.append((genes[a], genes[b], row_type))
    return rows


def grn_frame(rows, typed):
    frame = pd.DataFrame({'source': [r[0] for r in rows],
                          'target': [r[1] for r in rows]})
    if typed:
        frame['cell_type'] = [np.nan if r[2] is None else r[2] for r in rows]
    return frame


CASES = {
    'knn-2d-str-nogrn-lrlist': dict(
        n=40, dim=2, G=4, types='str', rule='knn', k=5, grn=None, lr='list'),
    'knn-3d-int-grnframe-lrframe-noreorder': dict(
        n=30, dim=3, G=5, types='int', rule='knn', k=3, grn='frame', lr='frame',
        reorder=False, xF=2),
    'knn-2d-int-maxdist-autocrine-typedlist': dict(
        n=25, dim=2, G=3, types='int', rule='knn', k=6, max_distance=2.0,
        grn='typed_list', lr='list', autocrine=True),
    'radius-2d-str-typed-lrcsv-autocrine': dict(
        n=50, dim=2, G=3, types='str', rule='radius', radius=2.5, grn='typed',
        lr='csv', autocrine=True),
    'radius-3d-int-typed-nolr-noreorder': dict(
        n=35, dim=3, G=6, types='int', rule='radius', radius=4.0, grn='typed',
        lr=None, reorder=False),
    'delaunay-2d-str-maxdist-autocrine': dict(
        n=45, dim=2, G=4, types='str', rule='delaunay', max_distance=2.5,
        grn='frame', lr='list', autocrine=True, xF=3),
    'delaunay-3d-int-noreorder-lrframe': dict(
        n=25, dim=3, G=3, types='int', rule='delaunay', grn=None, lr='frame',
        reorder=False),
    'delaunay-3d-str-typedcsv': dict(
        n=30, dim=3, G=4, types='str', rule='delaunay', grn='typed_csv',
        lr='csv'),
    'given-2d-str-maxdist-typedcsv': dict(
        n=20, dim=2, G=4, types='str', rule='given', max_distance=6.0,
        grn='typed_csv', lr='list'),
    'given-3d-int-tensor-autocrine-typedcsv': dict(
        n=15, dim=3, G=5, types='int', rule='given', given_tensor=True,
        grn='typed_csv', lr='csv', autocrine=True),
    'given-2d-int-noreorder-nolr': dict(
        n=12, dim=2, G=3, types='int', rule='given', grn='typed', lr=None,
        reorder=False),
    'knn-3d-str-typed-lrframe-60cells': dict(
        n=60, dim=3, G=4, types='str', rule='knn', k=8, grn='typed', lr='frame'),
}


def build_case(spec, seed, tmp_path):
    """Returns (builder kwargs, reference description) for a case."""
    rng = np.random.default_rng(seed)
    pos, cell_type, genes, type_values = make_tissue(
        rng, spec['n'], spec['dim'], spec['G'], spec['types'])
    kwargs = dict(reorder=spec.get('reorder', True),
                  autocrine=spec.get('autocrine', False),
                  max_distance=spec.get('max_distance'))

    rule = spec['rule']
    given = None
    if rule == 'given':
        n = spec['n']
        all_pairs = [(j, i) for i in range(n) for j in range(n) if i != j]
        chosen = rng.choice(len(all_pairs), 3 * n, replace=False)
        given = np.array([all_pairs[c] for c in chosen], dtype=np.int64).T
        kwargs['neighbors'] = (torch.from_numpy(given.copy())
                               if spec.get('given_tensor') else given.copy())
    else:
        kwargs['neighbors'] = rule
        if rule == 'knn':
            kwargs['k'] = spec['k']
        if rule == 'radius':
            kwargs['radius'] = spec['radius']

    lr_rows = None
    if spec['lr'] is not None:
        lr_rows = make_lr_rows(rng, genes)
        frame = pd.DataFrame(lr_rows, columns=['ligand', 'receptor'])
        if spec['lr'] == 'list':
            kwargs['lr_pairs'] = list(lr_rows)
        elif spec['lr'] == 'frame':
            frame['score'] = rng.uniform(size=len(frame))  # extra columns are fine
            kwargs['lr_pairs'] = frame
        else:
            path = tmp_path / f'lr_{seed}.csv'
            frame.to_csv(path, index=False)
            kwargs['lr_pairs'] = str(path)

    grn_rows = None
    if spec['grn'] is not None:
        typed = spec['grn'] != 'frame'
        grn_rows = make_grn_rows(rng, genes, type_values, typed)
        if spec['grn'] == 'typed_list':
            kwargs['grn'] = list(grn_rows)
        elif spec['grn'] == 'typed_csv':
            path = tmp_path / f'grn_{seed}.csv'
            grn_frame(grn_rows, typed).to_csv(path, index=False)
            kwargs['grn'] = path  # a pathlib.Path
        else:
            kwargs['grn'] = grn_frame(grn_rows, typed)

    x = None
    if 'xF' in spec:
        x = rng.normal(size=(spec['n'], spec['G'], spec['xF']))
    elif seed % 2 == 0:
        x = rng.normal(size=(spec['n'], spec['G']))
    kwargs['x'] = x
    ref = dict(pos=pos, cell_type=cell_type, genes=genes, rule=rule,
               k=spec.get('k'), radius=spec.get('radius'), given=given,
               lr_rows=lr_rows, grn_rows=grn_rows, x=x)
    return kwargs, ref


# --------------------------------------------------------------------------
# 1. + 2. Builder against the reference, with the structural checks
# --------------------------------------------------------------------------

@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('name', list(CASES))
def test_builder_matches_reference(name, seed, tmp_path):
    spec = CASES[name]
    kwargs, ref = build_case(spec, seed, tmp_path)
    data = build_tissue_graph(ref['pos'], ref['cell_type'], ref['genes'], **kwargs)
    check_structure(data, ref['pos'], ref['cell_type'], ref['genes'], x=ref['x'],
                    autocrine=kwargs['autocrine'])
    if not kwargs['reorder']:
        assert data[CELL].n_id.tolist() == list(range(spec['n']))

    near_exp = ref_near(ref['pos'], ref['rule'], k=ref['k'], radius=ref['radius'],
                        given=ref['given'], max_distance=kwargs['max_distance'])
    assert len(near_exp) > 0
    reg_exp = ref_regulates(ref['cell_type'].tolist(), ref['genes'], ref['grn_rows'])
    sig_exp = ref_signals(near_exp, spec['n'], ref['genes'], ref['lr_rows'],
                          kwargs['autocrine'])

    near, reg, sig = graph_to_input(data, ref['genes'])
    assert_weighted_equal(near, near_exp)
    assert len(reg) == len(set(reg)), 'duplicated regulates edges'
    assert set(reg) == reg_exp
    assert_weighted_equal({k: v[0] for k, v in sig.items()},
                          {k: v[0] for k, v in sig_exp.items()})
    for key, (_, pair) in sig.items():
        assert pair == (key[1], key[3])

    if ref['lr_rows'] is None:
        assert data.lr_pairs == []
        assert data[SIGNALS].edge_index.shape == (2, 0)
    else:
        expected_pairs = {tuple(r) for r in ref['lr_rows']}
        assert len(data.lr_pairs) == len(expected_pairs)
        assert set(map(tuple, data.lr_pairs)) == expected_pairs


def test_no_prior_gives_all_ordered_pairs_per_cell():
    rng = np.random.default_rng(3)
    pos, cell_type, genes, _ = make_tissue(rng, 10, 2, 4, 'str')
    data = build_tissue_graph(pos, cell_type, genes, k=2)
    assert data[REGULATES].num_edges == 10 * 4 * 3
    _, reg, _ = graph_to_input(data, genes)
    assert set(reg) == {(c, a, b) for c in range(10) for a in genes for b in genes
                        if a != b}


def test_typed_grn_with_given_cell_types_and_int_codes():
    # integer codes together with explicit type names; a GRN typed by name
    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 10, (20, 2))
    codes = np.arange(20) % 2
    genes = GENE_POOL[:4]
    grn = pd.DataFrame({'source': ['Tgfb1', 'Notch1', 'Dll1'],
                        'target': ['Notch1', 'Dll1', 'Il6'],
                        'cell_type': ['epi', 'mes', np.nan]})
    data = build_tissue_graph(pos, codes, genes, grn=grn, k=3,
                              cell_types=['epi', 'mes'])
    assert data.cell_type_names == ['epi', 'mes']
    _, reg, _ = graph_to_input(data, genes)
    labels = ['epi' if c == 0 else 'mes' for c in codes]
    rows = [tuple(r) for r in grn.itertuples(index=False)]
    assert set(reg) == ref_regulates(labels, genes, rows)


def test_x_two_and_three_dimensional():
    rng = np.random.default_rng(5)
    pos, cell_type, genes, _ = make_tissue(rng, 18, 2, 3, 'int')
    x2 = rng.normal(size=(18, 3))
    d2 = build_tissue_graph(pos, cell_type, genes, k=3, x=x2)
    assert d2[GENE].x.shape == (18 * 3, 1)
    assert d2[GENE].x.dtype == torch.float32
    check_structure(d2, pos, cell_type, genes, x=x2)
    x3 = torch.randn(18, 3, 4, dtype=torch.float64)
    d3 = build_tissue_graph(pos, cell_type, genes, k=3, x=x3, dtype=torch.float64)
    assert d3[GENE].x.shape == (18 * 3, 4)
    assert d3[GENE].x.dtype == torch.float64
    assert d3[CELL].pos.dtype == torch.float64
    check_structure(d3, pos, cell_type, genes, x=x3.numpy())
    # cell-major: reshaping the state gives [N, G, F] in graph order
    n_id = d3[CELL].n_id
    torch.testing.assert_close(d3[GENE].x.view(18, 3, 4), x3[n_id])


def test_no_lr_pairs_means_no_signals_edges():
    rng = np.random.default_rng(6)
    pos, cell_type, genes, _ = make_tissue(rng, 15, 3, 3, 'str')
    data = build_tissue_graph(pos, cell_type, genes, lr_pairs=None, k=4,
                              autocrine=True)
    assert data.lr_pairs == []
    assert data[SIGNALS].edge_index.shape == (2, 0)
    assert data[SIGNALS].edge_attr.shape == (0, 1)
    assert data[SIGNALS].lr_pair.shape == (0, )
    assert data.edge_counts() == {'near': 60, 'regulates': 15 * 6, 'signals': 0}
    data.validate(raise_on_error=True)


def test_autocrine_adds_self_signals_not_near():
    rng = np.random.default_rng(7)
    pos, cell_type, genes, _ = make_tissue(rng, 12, 2, 3, 'str')
    lr = [('Tgfb1', 'Notch1')]
    plain = build_tissue_graph(pos, cell_type, genes, lr_pairs=lr, k=3)
    auto = build_tissue_graph(pos, cell_type, genes, lr_pairs=lr, k=3,
                              autocrine=True)
    assert torch.equal(plain[NEAR].edge_index, auto[NEAR].edge_index)
    assert auto[SIGNALS].num_edges == plain[SIGNALS].num_edges + 12
    src, dst = auto[SIGNALS].edge_index // 3
    self_loop = src == dst
    assert int(self_loop.sum()) == 12
    assert bool((auto[SIGNALS].edge_attr.view(-1)[self_loop] == 0).all())
    assert not bool((auto[NEAR].edge_index[0] == auto[NEAR].edge_index[1]).any())


def test_lr_pairs_sorted_by_receptor():
    rng = np.random.default_rng(8)
    pos, cell_type, genes, _ = make_tissue(rng, 10, 2, 6, 'str')
    lr = [('Il6', 'Il6r'), ('Tgfb1', 'Tgfbr2'), ('Dll1', 'Notch1'), ('Il6', 'Notch1')]
    data = build_tissue_graph(pos, cell_type, genes, lr_pairs=lr, k=2)
    index = {g: i for i, g in enumerate(genes)}
    keys = [(index[r], index[lg]) for lg, r in data.lr_pairs]
    assert keys == sorted(keys)
    assert set(data.lr_pairs) == set(lr)


# --------------------------------------------------------------------------
# 3. Batching
# --------------------------------------------------------------------------

def _two_tissues(seed=10, sizes=(17, 29), x=True):
    rng = np.random.default_rng(seed)
    genes = GENE_POOL[:4]
    out = []
    for t, n in enumerate(sizes):
        pos = rng.uniform(0, 10, (n, 2))
        cell_type = np.array(STR_TYPES)[np.arange(n) % 3]
        lr = make_lr_rows(rng, genes, num=2 + t)
        grn = grn_frame(make_grn_rows(rng, genes, STR_TYPES, True), True)
        xs = rng.normal(size=(n, len(genes))) if x else None
        out.append(build_tissue_graph(pos, cell_type, genes, lr_pairs=lr, grn=grn,
                                      k=3 + t, x=xs, autocrine=bool(t)))
    return out, len(genes)


def check_batch(batch, parts, num_genes):
    cells = [d.num_cells for d in parts]
    assert batch.num_cells == sum(cells)
    assert batch[CELL].num_nodes == sum(cells)
    assert batch[GENE].num_nodes == sum(cells) * num_genes
    expected_batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(cells)])
    assert torch.equal(batch[CELL].batch, expected_batch)
    assert torch.equal(batch[GENE].batch,
                       expected_batch.repeat_interleave(num_genes))

    cell_offset, gene_cell, gene_gene = 0, [], []
    for d in parts:
        gene_cell.append(d[GENE].cell + cell_offset)
        gene_gene.append(d[GENE].gene)
        cell_offset += d.num_cells
    assert torch.equal(batch[GENE].cell, torch.cat(gene_cell))
    assert torch.equal(batch[GENE].gene, torch.cat(gene_gene))
    node = torch.arange(sum(cells) * num_genes)
    assert torch.equal(batch[GENE].cell * num_genes + batch[GENE].gene, node)
    assert torch.equal(batch[CELL].n_id, torch.cat([d[CELL].n_id for d in parts]))
    assert torch.equal(batch[CELL].cell_type,
                       torch.cat([d[CELL].cell_type for d in parts]))

    for rel, per_cell in ((NEAR, 1), (REGULATES, num_genes), (SIGNALS, num_genes)):
        start, offset = 0, 0
        for d in parts:
            e = d[rel].num_edges
            got = batch[rel].edge_index[:, start:start + e]
            assert torch.equal(got, d[rel].edge_index + offset), rel
            start += e
            offset += d.num_cells * per_cell
        assert batch[rel].num_edges == start
    for rel in (NEAR, SIGNALS):
        assert torch.equal(batch[rel].edge_attr,
                           torch.cat([d[rel].edge_attr for d in parts]))
    assert torch.equal(batch[SIGNALS].lr_pair,
                       torch.cat([d[SIGNALS].lr_pair for d in parts]))
    if 'x' in parts[0][GENE]:
        assert torch.equal(batch[GENE].x, torch.cat([d[GENE].x for d in parts]))
    batch.validate(raise_on_error=True)


def test_batch_from_data_list_shifts_indices():
    parts, num_genes = _two_tissues()
    assert parts[0].num_cells != parts[1].num_cells
    batch = Batch.from_data_list(parts)
    check_batch(batch, parts, num_genes)
    # the per-tissue graphs come back unchanged
    for i, d in enumerate(parts):
        back = batch.get_example(i)
        for rel in (NEAR, REGULATES, SIGNALS):
            assert torch.equal(back[rel].edge_index, d[rel].edge_index)
        assert torch.equal(back[GENE].cell, d[GENE].cell)


def test_dataloader_batches():
    parts_a, num_genes = _two_tissues(seed=11, sizes=(13, 22))
    parts_b, _ = _two_tissues(seed=12, sizes=(31, 10))
    dataset = parts_a + parts_b
    loader = DataLoader(dataset, batch_size=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    check_batch(batches[0], parts_a, num_genes)
    check_batch(batches[1], parts_b, num_genes)


# --------------------------------------------------------------------------
# 4. The user's inputs are not modified
# --------------------------------------------------------------------------

@pytest.mark.parametrize('as_tensor', [False, True])
def test_inputs_not_modified(as_tensor, tmp_path):
    rng = np.random.default_rng(13)
    n = 24
    pos = rng.uniform(0, 10, (n, 2))
    cell_type = list(np.array(STR_TYPES)[np.arange(n) % 3])
    genes = list(GENE_POOL)
    lr_list = [('Tgfb1', 'Tgfbr2'), ('Il6', 'Il6r')]
    lr_frame = pd.DataFrame({'ligand': ['Dll1', 'Tgfb1'],
                             'receptor': ['Notch1', 'Tgfbr2']})
    grn = pd.DataFrame({'source': ['Tgfb1', 'Notch1', 'Il6'],
                        'target': ['Notch1', 'Dll1', 'Tgfb1'],
                        'cell_type': ['T', np.nan, 'B']})
    x = rng.normal(size=(n, 6))
    given = np.array([[1, 2, 3, 0, 5], [0, 0, 1, 4, 2]])
    if as_tensor:
        pos, x = torch.from_numpy(pos), torch.from_numpy(x)
        given = torch.from_numpy(given)
    saved = copy.deepcopy(dict(pos=pos, cell_type=cell_type, genes=genes,
                               lr_list=lr_list, lr_frame=lr_frame, grn=grn, x=x,
                               given=given))

    for lr in (lr_list, lr_frame):
        for neighbors in ('knn', given):
            build_tissue_graph(pos, cell_type, genes, lr_pairs=lr, grn=grn,
                               neighbors=neighbors, k=3, x=x, autocrine=True)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, np.ndarray):
            return np.array_equal(a, b)
        return a == b

    now = dict(pos=pos, x=x, given=given, cell_type=cell_type, genes=genes,
               lr_list=lr_list)
    for key, value in now.items():
        assert type(value) is type(saved[key]), key
        assert same(value, saved[key]), key
    pd.testing.assert_frame_equal(lr_frame, saved['lr_frame'])
    pd.testing.assert_frame_equal(grn, saved['grn'])


# --------------------------------------------------------------------------
# 5. Validation errors
# --------------------------------------------------------------------------

def _base_inputs():
    rng = np.random.default_rng(20)
    n = 20
    return dict(
        pos=rng.uniform(0, 10, (n, 2)),
        cell_type=np.array(['T', 'B'])[np.arange(n) % 2],
        genes=['A', 'B', 'C', 'D'],
        lr_pairs=[('A', 'C'), ('B', 'D')],
        grn=None,
        k=4,
    )


def _pos_with(value):
    pos = _base_inputs()['pos'].copy()
    pos[3, 1] = value
    return pos


ERRORS = {
    'pos-nan': (dict(pos=_pos_with(np.nan)), r"'pos' has NaN or Inf in 1 cell"),
    'pos-inf': (dict(pos=_pos_with(np.inf)), r"'pos' has NaN or Inf .*rows \[3\]"),
    'pos-1d': (dict(pos=np.zeros(20)), r"'pos' must have shape .*got \[20\]"),
    'pos-4d': (dict(pos=np.zeros((20, 4))), r"'pos' must have shape .*got \[20, 4\]"),
    'cell-type-length': (dict(cell_type=np.array(['T'] * 19)),
                         r"'cell_type' has 19 entries but 'pos' has 20 cells"),
    'x-shape': (dict(x=np.zeros((20, 5))), r"'x' must have shape .*= \[20, 4"),
    'x-shape-3d': (dict(x=np.zeros((20, 5, 2))), r"'x' must have shape .*\[20, 5, 2\]"),
    'x-shape-cells': (dict(x=np.zeros((19, 4))), r"'x' must have shape"),
    'x-nan': (dict(x=np.where(np.eye(20, 4) > 0, np.nan, 1.0)), r"'x' has NaN"),
    'ligand-missing': (dict(lr_pairs=[('A', 'C'), ('Wnt5a', 'D')]),
                       r"1 of 2 rows .*ligand.*1 ligand gene\(s\) \['Wnt5a'\]"),
    'receptor-missing': (dict(lr_pairs=[('A', 'Fzd1'), ('B', 'Fzd2'), ('A', 'C')]),
                         r"2 of 3 rows .*2 receptor gene\(s\) \['Fzd1', 'Fzd2'\]"),
    'grn-gene-missing': (dict(grn=[('A', 'B'), ('Sox2', 'C')]),
                         r"GRN table .*1 source gene\(s\) \['Sox2'\]"),
    'missing-genes-invalid': (dict(missing_genes='ignore'),
                              r"'missing_genes' must be one of .*'ignore'"),
    'grn-unknown-type': (dict(grn=pd.DataFrame({'source': ['A'], 'target': ['B'],
                                                'cell_type': ['NK']})),
                         r"cell type\(s\) \['NK'\]"),
    'k-equals-n': (dict(k=20), r"'k' must be smaller .*k=20 for 20 cells"),
    'k-larger-than-n': (dict(k=50), r"'k' must be smaller"),
    'k-zero': (dict(k=0), r"'k' must be a positive integer"),
    'radius-too-small': (dict(neighbors='radius', radius=1e-6),
                         r"'radius' neighbourhood graph has no edges"),
    'max-distance-too-small': (dict(max_distance=1e-9), r"graph has no edges"),
    'radius-missing': (dict(neighbors='radius'), r"needs a positive 'radius'"),
    'radius-negative': (dict(neighbors='radius', radius=-1.0),
                        r"needs a positive 'radius'"),
    'unknown-rule': (dict(neighbors='gabriel'),
                     r"'neighbors' must be one of .*'gabriel'"),
    'given-out-of-range': (dict(neighbors=np.array([[0, 25], [1, 2]])),
                           r"outside 0\.\.19"),
    'given-wrong-shape': (dict(neighbors=np.array([[0, 1, 2]])),
                          r"shape \[2, num_edges\]"),
    'duplicated-genes': (dict(genes=['A', 'B', 'A', 'C']),
                         r"'genes' has 1 duplicated name\(s\) \['A'\]"),
    'lr-missing-receptor-column': (
        dict(lr_pairs=pd.DataFrame({'ligand': ['A'], 'target': ['C']})),
        r"\['receptor'\] are missing"),
    'delaunay-collinear': (
        dict(pos=np.stack([np.linspace(0, 5, 20), 2 * np.linspace(0, 5, 20)], 1),
             neighbors='delaunay'),
        r"Delaunay triangulation .*failed"),
    'delaunay-too-few': (
        dict(pos=np.array([[0.0, 0.0], [1.0, 0.5]]), cell_type=['T', 'B'],
             neighbors='delaunay'),
        r"needs at least 3 cells"),
}


@pytest.mark.parametrize('name', list(ERRORS))
def test_validation_errors(name):
    overrides, pattern = ERRORS[name]
    inputs = _base_inputs()
    inputs.update(overrides)
    with pytest.raises(ValueError, match=pattern):
        build_tissue_graph(**inputs)


def test_missing_lr_table_file(tmp_path):
    inputs = _base_inputs()
    inputs['lr_pairs'] = str(tmp_path / 'nope.csv')
    with pytest.raises(FileNotFoundError, match='nope.csv'):
        build_tissue_graph(**inputs)
    inputs['lr_pairs'] = tmp_path / 'nope.csv'
    with pytest.raises(FileNotFoundError, match='does not exist'):
        build_tissue_graph(**inputs)


def test_missing_genes_drop_lr():
    inputs = _base_inputs()
    inputs['lr_pairs'] = [('A', 'C'), ('Wnt5a', 'D'), ('B', 'Fzd1')]
    with pytest.warns(UserWarning, match=r"Wnt5a") as record:
        data = build_tissue_graph(missing_genes='drop', **inputs)
    assert any('Fzd1' in str(w.message) for w in record)
    assert data.lr_pairs == [('A', 'C')]
    check_structure(data, inputs['pos'], inputs['cell_type'], inputs['genes'])


def test_missing_genes_drop_grn():
    inputs = _base_inputs()
    inputs['grn'] = pd.DataFrame({'source': ['A', 'Sox2', 'C'],
                                  'target': ['B', 'C', 'D']})
    with pytest.warns(UserWarning, match=r"Sox2"):
        data = build_tissue_graph(missing_genes='drop', **inputs)
    _, reg, _ = graph_to_input(data, inputs['genes'])
    assert set(reg) == {(c, s, t) for c in range(20)
                        for s, t in (('A', 'B'), ('C', 'D'))}


def test_lr_table_empty_after_drop_raises():
    inputs = _base_inputs()
    inputs['lr_pairs'] = pd.DataFrame({'ligand': ['Wnt5a'], 'receptor': ['Fzd1']})
    with pytest.warns(UserWarning, match='Wnt5a'):
        with pytest.raises(ValueError, match='empty after mapping'):
            build_tissue_graph(missing_genes='drop', **inputs)


# --------------------------------------------------------------------------
# Regression tests for bugs found while writing these tests (now fixed)
# --------------------------------------------------------------------------

def test_grn_cell_type_name_ending_in_dot_zero():
    rng = np.random.default_rng(30)
    pos = rng.uniform(0, 10, (12, 2))
    cell_type = np.array(['v1.0', 'v2'] * 6)
    genes = ['A', 'B', 'C']
    grn = pd.DataFrame({'source': ['A', 'B'], 'target': ['B', 'C'],
                        'cell_type': ['v1.0', np.nan]})
    data = build_tissue_graph(pos, cell_type, genes, grn=grn, k=3)
    _, reg, _ = graph_to_input(data, genes)
    rows = [tuple(r) for r in grn.itertuples(index=False)]
    assert set(reg) == ref_regulates(cell_type.tolist(), genes, rows)


def test_invalid_missing_genes_without_tables():
    inputs = _base_inputs()
    inputs['lr_pairs'] = None
    with pytest.raises(ValueError, match="'missing_genes' must be one of"):
        build_tissue_graph(missing_genes='ignore', **inputs)


def test_x_shape_message_reports_given_shape():
    inputs = _base_inputs()
    with pytest.raises(ValueError, match=r"got \[20, 5\]\)"):
        build_tissue_graph(x=np.zeros((20, 5)), **inputs)
