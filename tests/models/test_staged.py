import pytest
import torch

from torch_staged.data import tile
from torch_staged.models import STAGED, IntegrationError
from torch_staged.nn import STAGEDODEFunc
from torch_staged.testing import random_tissue


def test_forward_shape_repr_and_nfe():
    data = random_tissue(20, 4, seed=0)
    model = STAGED(4, 3, augment=2)
    t = torch.linspace(0, 1, 5)
    out = model(data, t)
    assert out.shape == (5, 20, 4)
    assert torch.allclose(out[0], data['gene'].x[:, 0].view(20, 4))
    assert model.nfe > 0
    assert repr(model) == ("STAGED(num_genes=4, num_cell_types=3, augment=2, "
                           "method='dopri5', adjoint=False)")
    assert repr(model.func).startswith('STAGEDODEFunc(num_genes=4')


def test_func_needs_a_graph():
    func = STAGEDODEFunc(3, 2)
    with pytest.raises(RuntimeError, match='set_graph'):
        func(torch.tensor(0.0), torch.zeros(6, 1))


@pytest.mark.parametrize('method,options', [('dopri5', None), ('rk4', {'step_size': 0.05})])
def test_adjoint_matches_direct_backprop(method, options):
    torch.manual_seed(0)
    data = random_tissue(12, 4, seed=1)
    kwargs = dict(method=method, rtol=1e-10, atol=1e-10, options=options)
    direct = STAGED(4, 3, hidden_channels=4, mlp_channels=8, **kwargs).double()
    adjoint = STAGED(4, 3, hidden_channels=4, mlp_channels=8, adjoint=True,
                     **kwargs).double()
    adjoint.load_state_dict(direct.state_dict())
    t = torch.linspace(0, 0.5, 3, dtype=torch.float64)
    x0 = data['gene'].x[:, 0].double().view(12, 4)
    weight = torch.randn(3, 12, 4, dtype=torch.float64)
    (direct(data, t, x0) * weight).sum().backward()
    (adjoint(data, t, x0) * weight).sum().backward()
    # A step that divides the output times: both run the same grid.
    tol = 1e-7 if method == 'dopri5' else 1e-6
    for (name, p), q in zip(direct.named_parameters(), adjoint.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=tol, rtol=tol), name


def test_gradcheck_vector_field_and_solve():
    torch.manual_seed(0)
    data = random_tissue(6, 3, num_cell_types=2, num_pairs=2, k=2, seed=2)
    func = STAGEDODEFunc(3, 2, hidden_channels=2, mlp_channels=3, gene_dim=2).double()
    func.set_graph(data)
    x = torch.randn(18, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: func(torch.tensor(0.0), x), (x, ))
    names = ['weight1', 'decay', 'conv.att_src', 'conv.value', 'conv.gene_emb.weight']
    params = dict(func.named_parameters())
    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)

    def with_params(*values):
        return torch.func.functional_call(func, dict(zip(names, values)),
                                          (torch.tensor(0.0), x.detach()))
    assert torch.autograd.gradcheck(with_params, inputs)

    model = STAGED(3, 2, hidden_channels=2, mlp_channels=3, gene_dim=2,
                   method='rk4', options={'step_size': 0.25}).double()
    t = torch.linspace(0, 0.5, 3, dtype=torch.float64)
    x0 = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x0: model(data, t, x0), (x0, ))


def test_tile_interior_rhs_equals_full_tissue():
    torch.manual_seed(0)
    data = random_tissue(150, 5, seed=3, k=5)
    func = STAGEDODEFunc(5, 3, heads=2).double()
    G = 5
    x = torch.randn(data['gene'].num_nodes, 1, dtype=torch.float64)
    full = func.set_graph(data)(torch.tensor(0.0), x)
    tiles = tile(data, tile_size=3.0, halo=1)
    assert len(tiles) > 4
    counted = torch.zeros(data.num_cells, dtype=torch.long)
    for sub in tiles:
        sub.validate(raise_on_error=True)
        ids = (sub['cell'].parent_id.view(-1, 1) * G + torch.arange(G)).view(-1)
        out = func.set_graph(sub)(torch.tensor(0.0), x[ids])
        interior = sub['cell'].interior.repeat_interleave(G)
        # Same computation, up to float summation order of differently sized
        # arrays:
        assert torch.allclose(out[interior], full[ids][interior], atol=1e-12, rtol=0)
        assert bool((sub['cell'].clamped == ~sub['cell'].interior).all())
        counted[sub['cell'].parent_id[sub['cell'].interior]] += 1
    assert bool((counted == 1).all())  # every cell is interior to exactly one tile


def test_tile_cost_does_not_grow_with_tissue():
    # The same local neighbourhood inside a small and a 4x larger tissue gives
    # tiles of similar size.
    small = tile(random_tissue(100, 3, seed=4), tile_size=2.5)
    large = tile(random_tissue(400, 3, seed=4), tile_size=2.5)
    mean = lambda tiles: sum(t['cell'].num_nodes for t in tiles) / len(tiles)  # noqa
    assert mean(large) < 1.5 * mean(small)


def test_bad_tile_arguments():
    data = random_tissue(20, 3)
    with pytest.raises(ValueError, match="'tile_size' must be positive"):
        tile(data, 0)
    with pytest.raises(ValueError, match="'halo' must be an integer >= 1"):
        tile(data, 2.0, halo=0)


def test_nan_guard_names_time_and_remedy():
    data = random_tissue(10, 3, seed=5)
    model = STAGED(3, 3, method='rk4', options={'step_size': 0.1})
    with torch.no_grad():
        model.func.bias2.fill_(1e38)  # float32 overflows within one rk4 step
    with pytest.raises(IntegrationError, match=r'NaN/Inf at time index \d.*learning rate'):
        model(data, torch.linspace(0, 5, 6))


@pytest.mark.parametrize('normalize,extra', [
    ('softmax', dict(score_state=True, pair_dim=0, value_channels=0)),
    ('gate', dict(score_state=True, pair_dim=2, value_embedding=True)),
    ('gate', dict(score_state=False, value_channels=3, value_embedding=False,
                  pair_dim='full')),
    ('softmax', dict(attention='mean'))])
def test_stacked_intervals_equal_one_by_one(normalize, extra):
    # solve_intervals / rates: C copies of the graph in one solve equal C solves,
    # in outputs and gradients (float64); repeat() keeps per-relation edge order.
    # Static scores take the batched path (one graph, a batch of states).
    torch.manual_seed(0)
    data = random_tissue(10, 4, num_cell_types=2, num_pairs=2, k=3, seed=3)
    model = STAGED(4, 2, hidden_channels=4, mlp_channels=8, heads=2, augment=1,
                   **{'attention': 'gatv2', 'normalize': normalize, **extra},
                   rtol=1e-10, atol=1e-10).double()
    assert model.static_scores == (not extra.get('score_state', False))
    x0 = torch.randn(3, 10, 4, dtype=torch.float64)
    dt = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]

    def both(stacked):
        out = (model.solve_intervals(data, x0, dt) if stacked else torch.stack([
            model(data, torch.tensor([0.0, float(d)], dtype=torch.float64), x)[-1]
            for x, d in zip(x0, dt)]))
        rates = (model.rates(data, x0) if stacked else torch.stack([
            model.func.set_graph(data)(torch.tensor(0.0), model.initial_state(
                data, x))[:, 0].view(10, 4) for x in x0]))
        grads = torch.autograd.grad((out.sin().sum() + rates.cos().sum()), params)
        return out, rates, grads

    out, rates, grads = both(True)
    ref_out, ref_rates, ref_grads = both(False)
    assert torch.allclose(out, ref_out, atol=1e-8)
    assert torch.allclose(rates, ref_rates, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-7)
    fused = model.func.set_graph(data).graph
    three = fused.repeat(3)
    for one, rel in zip(fused.relation_edge_index(), three.relation_edge_index()):
        copies = [one + c * fused.num_nodes for c in range(3)]
        assert torch.equal(rel, torch.cat(copies, dim=1))
    with pytest.raises(ValueError, match='positive durations'):
        model.solve_intervals(data, x0, torch.tensor([0.5, 0.0, 0.3]))


def test_config_round_trip_and_legacy_configs():
    model = STAGED(4, 3, hidden_channels=4)
    assert STAGED.from_config(model.config).config == model.config
    assert model.config['normalize'] == 'gate' and model.config['pair_dim'] == 'full'
    assert not model.config['score_state'] and model.config['value_channels'] == 8
    new_keys = ('score_state', 'value_channels', 'value_embedding')
    old = {k: v for k, v in model.config.items() if k not in new_keys}
    gates = STAGED.from_config(dict(old, pair_dim=4))  # gates, before static scores
    conv = gates.func.conv
    assert conv.score_state and conv.value_channels == 0 and conv.value_embedding
    assert conv.normalize == 'gate' and conv.pair_dim == 4
    older = {k: v for k, v in old.items() if k not in ('normalize', 'pair_dim')}
    legacy = STAGED.from_config(older)  # written before gates became the default
    assert legacy.func.conv.normalize == 'softmax' and legacy.func.conv.pair_src is None
    assert legacy.func.conv.pair_table is None and legacy.func.conv.score_state
