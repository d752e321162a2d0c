"""build_tissue_graph(batch=...): one block-diagonal graph of several sections."""
import numpy as np
import pytest
import torch

from torch_staged.data import build_tissue_graph
from torch_staged.typing import CELL, NEAR, REGULATES, SIGNALS

GENES = ['A', 'B', 'C', 'D']
PAIRS = [('A', 'C'), ('B', 'D')]


def _sections(seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 4, (30, 2))  # both sections in the same square
    types = rng.integers(0, 2, 30)
    batch = np.array(['s2'] * 12 + ['s1'] * 18)
    return pos, types, batch


@pytest.mark.parametrize('rule', ['knn', 'radius', 'delaunay'])
def test_batch_equals_the_sections_built_one_by_one(rule):
    pos, types, batch = _sections()
    kwargs = dict(lr_pairs=PAIRS, neighbors=rule, k=3, radius=1.5, cell_types=['0', '1'])
    data = build_tissue_graph(pos, types, GENES, batch=batch, **kwargs)
    assert data.section_names == ['s1', 's2']
    section = data[CELL].batch
    # cells are grouped by section, and n_id maps back to the input rows
    assert torch.equal(section, torch.sort(section).values)
    assert (batch[data[CELL].n_id.numpy()] == np.array(data.section_names)[section]).all()
    src, dst = data[NEAR].edge_index
    assert int((section[src] != section[dst]).sum()) == 0
    assert bool((dst[1:] >= dst[:-1]).all())
    for rel in (REGULATES, SIGNALS):
        assert bool((data[rel].edge_index[1, 1:] >= data[rel].edge_index[1, :-1]).all())
    parts = [build_tissue_graph(pos[batch == b], types[batch == b], GENES, **kwargs)
             for b in ('s1', 's2')]
    for rel, count in data.edge_counts().items():
        assert count == sum(p.edge_counts()[rel] for p in parts)
    # the same neighbour distances, section by section
    dist = data[NEAR].edge_attr.view(-1)
    for code, part in enumerate(parts):
        here = section[dst] == code
        torch.testing.assert_close(torch.sort(dist[here]).values,
                                   torch.sort(part[NEAR].edge_attr.view(-1)).values)


def test_without_batch_nothing_changes():
    pos, types, _ = _sections()
    plain = build_tissue_graph(pos, types, GENES, lr_pairs=PAIRS, k=3)
    assert 'batch' not in plain[CELL]
    one = build_tissue_graph(pos, types, GENES, lr_pairs=PAIRS, k=3,
                             batch=np.zeros(30, dtype=int))
    assert torch.equal(plain[NEAR].edge_index, one[NEAR].edge_index)
    assert torch.equal(plain[CELL].n_id, one[CELL].n_id)


def test_batch_errors():
    pos, types, batch = _sections()
    with pytest.raises(ValueError, match="'batch' has 29 entries"):
        build_tissue_graph(pos, types, GENES, batch=batch[:29])
    with pytest.raises(ValueError, match="section 's2' has 12 cells"):
        build_tissue_graph(pos, types, GENES, k=12, batch=batch)
    # edge 0 -> 20 joins s2 and s1; edge 1 -> 2 stays in s2
    with pytest.raises(ValueError, match='1 edge\\(s\\) between different sections'):
        build_tissue_graph(pos, types, GENES, neighbors=np.array([[0, 1], [20, 2]]),
                           batch=batch)
