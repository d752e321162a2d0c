import pytest
import torch

from torch_staged.nn import STAGEDODEFunc
from torch_staged.testing import random_tissue
from torch_staged.typing import RELATIONS


@pytest.mark.parametrize('attention,type_dim,extra', [
    ('gat', 0, {}), ('gatv2', 0, {}), ('gat', 3, {}),
    ('gat', 0, dict(normalize='gate', pair_dim=2, value_channels=3)),
    ('gat', 2, dict(normalize='gate', score_state=False, value_channels=3)),
    ('gatv2', 0, dict(normalize='gate', score_state=False)),
    ('gat', 2, dict(normalize='gate', value_channels=3, value_embedding=False)),
    ('gat', 0, dict(normalize='gate', pair_dim='full', score_state=False,
                    value_channels=3, value_embedding=False))])
@pytest.mark.parametrize('autocrine', [False, True])
def test_edge_jacobian_equals_autograd_jacobian(attention, type_dim, extra, autocrine):
    torch.manual_seed(0)
    data = random_tissue(10, 4, seed=0, autocrine=autocrine)
    func = STAGEDODEFunc(4, 3, attention=attention, heads=2, type_dim=type_dim, **extra)
    func = func.double().set_graph(data)
    n = data['gene'].num_nodes
    x = torch.randn(n, 1, dtype=torch.float64)
    full = torch.autograd.functional.jacobian(
        lambda x: func(torch.tensor(0.0), x), x).reshape(n, n)
    per_edge = func.edge_jacobian(x)
    # Sum the edges of all relations per (target, source) pair: an autocrine
    # ligand -> receptor edge may duplicate a GRN edge of the same cell.
    summed = torch.zeros(n, n, dtype=torch.float64)
    for r, rel in enumerate(RELATIONS):
        src, dst = data[rel].edge_index
        assert per_edge[r].shape == (src.numel(), )
        summed.index_put_((dst, src), per_edge[r], accumulate=True)
    mask = summed != 0
    assert bool(mask.any())
    assert torch.allclose(summed[mask], full[mask], atol=1e-12, rtol=0)
    # every edge-covered entry of the full Jacobian is accounted for
    covered = torch.zeros(n, n, dtype=torch.bool)
    for rel in RELATIONS:
        src, dst = data[rel].edge_index
        covered[dst, src] = True
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    assert bool((full[~covered & off_diagonal] == 0).all())


def test_clamped_nodes_follow_their_trajectory():
    data = random_tissue(12, 3, seed=1)
    func = STAGEDODEFunc(3, 3).set_graph(data)
    n = data['gene'].num_nodes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:6] = True
    t = torch.tensor([0.0, 1.0])
    values = torch.stack([torch.zeros(n, 1), torch.ones(n, 1)])
    func.set_clamp(mask, t, values)
    x = torch.randn(n, 1)
    dx = func(torch.tensor(0.5), x)
    assert bool((dx[:6] == 0).all()) and bool((dx[6:] != 0).any())
    # the clamped value (0.5 at t = 0.5) is what the neighbours see
    x2 = x.clone()
    x2[:6] = 0.5
    func.set_clamp(None)
    assert torch.allclose(func(torch.tensor(0.5), x2)[6:], dx[6:])
    with pytest.raises(ValueError, match='Clamp values must have shape'):
        func.set_clamp(mask, t, values[0])
