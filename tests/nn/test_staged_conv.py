import pytest
import torch

from torch_staged.nn import STAGEDConv
from torch_staged.testing import dense_staged_conv, perturb_parameters, random_tissue
from torch_staged.typing import REGULATES, RELATIONS, SIGNALS


@pytest.mark.parametrize('attention,act,type_dim,normalize,pair_dim,extra', [
    ('gat', 'leaky_relu', 0, 'softmax', 0, {}), ('gatv2', 'leaky_relu', 0, 'softmax', 0, {}),
    ('gat', 'smooth_leaky_relu', 0, 'softmax', 0, {}),
    ('gat', 'leaky_relu', 3, 'softmax', 0, {}),
    ('gatv2', 'smooth_leaky_relu', 2, 'softmax', 0, {}),
    ('gat', 'smooth_leaky_relu', 0, 'gate', 0, {}),
    ('gatv2', 'smooth_leaky_relu', 2, 'gate', 0, {}),
    ('gat', 'smooth_leaky_relu', 0, 'gate', 3, {}),
    ('gatv2', 'leaky_relu', 0, 'softmax', 2, {}),
    ('gat', 'smooth_leaky_relu', 2, 'gate', 3, dict(score_state=False, value_channels=4)),
    ('gatv2', 'leaky_relu', 0, 'gate', 0, dict(score_state=False)),
    ('gat', 'leaky_relu', 0, 'softmax', 0, dict(value_channels=3)),
    ('gat', 'smooth_leaky_relu', 2, 'gate', 2,
     dict(score_state=False, value_channels=3, value_embedding=False)),
    ('gatv2', 'leaky_relu', 0, 'gate', 0, dict(value_embedding=False)),
    ('gat', 'smooth_leaky_relu', 0, 'gate', 'full',
     dict(score_state=False, value_channels=3, value_embedding=False)),
    ('gatv2', 'smooth_leaky_relu', 2, 'softmax', 'full', {})])
@pytest.mark.parametrize('heads,concat,autocrine', [(1, True, False), (2, False, True),
                                                    (3, True, True)])
def test_matches_dense_reference_float64(attention, act, type_dim, normalize, pair_dim,
                                         extra, heads, concat, autocrine):
    torch.manual_seed(0)
    data = random_tissue(24, 6, num_cell_types=3, num_pairs=3, num_features=2,
                         autocrine=autocrine, seed=heads)
    conv = STAGEDConv(2, 4, num_genes=6, num_cell_types=3, heads=heads,
                      concat=concat, attention=attention, act=act,
                      type_dim=type_dim, normalize=normalize,
                      pair_dim=pair_dim, **extra).double()
    perturb_parameters(conv)
    x = data['gene'].x.double().requires_grad_()

    out, att = conv(x, data, return_attention_weights=True)
    x_ref = x.detach().clone().requires_grad_()
    ref, ref_att = dense_staged_conv(conv, x_ref, data)
    assert out.shape == (24 * 6, 2 * 4 * (heads if concat else 1))
    assert torch.allclose(out, ref, atol=1e-8, rtol=0)
    for rel in RELATIONS:
        edge_index, alpha = att[rel]
        assert torch.equal(edge_index, data[rel].edge_index)
        assert alpha.shape == (data[rel].num_edges, heads)
        assert torch.allclose(alpha, ref_att[rel], atol=1e-8, rtol=0)

    params = list(conv.parameters())
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), [x] + params)
    ref_grads = torch.autograd.grad((ref * weight).sum(), [x_ref] + params)
    for name, g, r in zip(['x'] + [n for n, _ in conv.named_parameters()], grads,
                          ref_grads):
        assert torch.allclose(g, r, atol=1e-8, rtol=0), name


def test_attention_is_a_distribution_per_target_and_relation():
    data = random_tissue(30, 5, seed=3)
    conv = STAGEDConv(1, 4, num_genes=5, num_cell_types=3, heads=2)
    _, att = conv(data['gene'].x, data, return_attention_weights=True)
    num_nodes = data['gene'].num_nodes
    for rel in (REGULATES, SIGNALS):
        edge_index, alpha = att[rel]
        assert bool(((alpha >= 0) & (alpha <= 1)).all())
        total = torch.zeros(num_nodes, 2).index_add_(0, edge_index[1], alpha)
        has_in = torch.bincount(edge_index[1], minlength=num_nodes) > 0
        assert torch.allclose(total[has_in], torch.ones(1), atol=1e-5)
        assert bool((total[~has_in] == 0).all())


def test_gates_are_signed_and_unnormalised():
    data = random_tissue(30, 5, seed=3)
    conv = STAGEDConv(1, 4, num_genes=5, num_cell_types=3, heads=2, normalize='gate')
    perturb_parameters(conv, 1.0)
    _, att = conv(data['gene'].x, data, return_attention_weights=True)
    alpha = att[REGULATES][1]
    assert bool((alpha.abs() <= 1).all())
    assert bool((alpha < 0).any()) and bool((alpha > 0).any())
    num_nodes = data['gene'].num_nodes
    total = torch.zeros(num_nodes, 2).index_add_(0, att[REGULATES][0][1], alpha)
    assert not torch.allclose(total[total != 0], torch.ones(1))


def test_repr():
    assert repr(STAGEDConv(1, 4, 3, 2, normalize='gate')) == (
        "STAGEDConv(1, 4, num_genes=3, num_cell_types=2, heads=1, normalize='gate')")
    assert repr(STAGEDConv(1, 16, num_genes=50, num_cell_types=3, heads=2)) == (
        'STAGEDConv(1, 16, num_genes=50, num_cell_types=3, heads=2)')
    assert repr(STAGEDConv(2, 8, 4, 2, attention='gatv2')) == (
        "STAGEDConv(2, 8, num_genes=4, num_cell_types=2, heads=1, attention='gatv2')")


@pytest.mark.parametrize('kwargs,match', [
    (dict(heads=0), "'heads' must be an integer >= 1"),
    (dict(attention='dot'), "'attention' must be one of"),
    (dict(act='relu'), "'act' must be one of"),
    (dict(normalize='sparsemax'), "'normalize' must be one of"),
    (dict(dropout=1.5), "'dropout' must lie in"),
    (dict(backend='cuda'), "'backend' must be one of"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STAGEDConv(1, 4, num_genes=3, num_cell_types=2, **kwargs)


def test_fused_structure_is_cached():
    data = random_tissue(20, 4, seed=1)
    conv = STAGEDConv(1, 4, num_genes=4, num_cell_types=3)
    conv(data['gene'].x, data)
    first = conv._fused_cache[1]
    conv(data['gene'].x * 2, data)
    assert conv._fused_cache[1] is first
    fused = conv.fuse_graph(data)
    assert fused is first
    # slots are sorted: one segment per (target, relation)
    assert bool((fused.slot[1:] >= fused.slot[:-1]).all())
    assert torch.equal(conv(data['gene'].x, fused), conv(data['gene'].x, data))


def _assert_same_gradients(out, ref_out, params, atol=1e-10):
    """The gradients of a random linear function of :obj:`out` and of
    :obj:`ref_out` agree for every tensor of :obj:`params`."""
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), params, allow_unused=True)
    ref = torch.autograd.grad((ref_out * weight).sum(), params, allow_unused=True)
    for g, r in zip(grads, ref):
        assert (g is None) == (r is None)
        if g is not None:
            assert torch.allclose(g, r, atol=atol, rtol=0)


@pytest.mark.parametrize('extra', [dict(value_channels=3, value_embedding=False),
                                   dict(type_dim=2, pair_dim='full'), dict(gene_dim=0)])
def test_batch_of_states_equals_one_by_one_float64(extra):
    # static scores: B states of one tissue in one pass == B separate passes,
    # in outputs and in every gradient
    torch.manual_seed(0)
    data = random_tissue(12, 5, num_cell_types=2, num_pairs=2, seed=3)
    conv = STAGEDConv(1, 4, num_genes=5, num_cell_types=2, heads=2, normalize='gate',
                      score_state=False, **extra).double()
    perturb_parameters(conv)
    x = torch.randn(data['gene'].num_nodes, 3, 1, dtype=torch.float64,
                    requires_grad=True)
    out = conv(x, data)
    singles = torch.stack([conv(x[:, b], data) for b in range(3)], dim=1)
    assert out.shape == singles.shape == (data['gene'].num_nodes, 3, conv.out_dim)
    assert torch.allclose(out, singles, atol=1e-12, rtol=0)
    _assert_same_gradients(out, singles, [x] + list(conv.parameters()))


def test_batch_aggregates_before_values_equal_one_by_one_float64():
    # apply_values=False (what the ODE's folded MLP reads): [N*G, B, R*H*D]
    # rows moved by a cached gather, equal to the passes one by one in outputs
    # and gradients, also after the batch size changes (a new cached order)
    torch.manual_seed(1)
    data = random_tissue(12, 5, num_cell_types=2, num_pairs=2, seed=3)
    conv = STAGEDConv(1, 4, num_genes=5, num_cell_types=2, heads=2, normalize='gate',
                      score_state=False, value_channels=3, value_embedding=False).double()
    perturb_parameters(conv)
    for B in (3, 2, 3):
        x = torch.randn(data['gene'].num_nodes, B, 1, dtype=torch.float64,
                        requires_grad=True)
        out = conv(x, data, apply_values=False)
        singles = torch.stack([conv(x[:, b], data, apply_values=False)
                               for b in range(B)], dim=1)
        assert out.shape == singles.shape and out.size(1) == B
        assert torch.allclose(out, singles, atol=1e-12, rtol=0)
        _assert_same_gradients(out, singles,
                               [x] + [p for p in conv.parameters() if p.requires_grad])
    assert conv._batch_major_cache[1] == 3


def test_batch_of_states_needs_static_scores():
    data = random_tissue(6, 3, seed=1)
    conv = STAGEDConv(1, 2, num_genes=3, num_cell_types=3)
    x = torch.randn(data['gene'].num_nodes, 2, 1)
    with pytest.raises(ValueError, match='score_state=False'):
        conv(x, data)


@pytest.mark.parametrize('attention,pair_dim,score_state,act', [
    ('gat', 'full', False, 'smooth_leaky_relu'),  # the default of STAGED
    ('gat', 0, False, 'smooth_leaky_relu'),
    ('gat', 'full', False, 'leaky_relu'), ('gat', 0, True, 'leaky_relu'),
    ('gatv2', 'full', False, 'smooth_leaky_relu'), ('gatv2', 0, True, 'leaky_relu')])
def test_gates_start_equal_and_the_data_tell_them_apart(attention, pair_dim, score_state,
                                                        act):
    # Every signed gate starts at the same tanh(act(0)) (GAT: the score
    # non-linearity of the zero score; GATv2: its outer vector is 0, so 0),
    # and one optimiser step tells the edges apart.
    torch.manual_seed(0)
    data = random_tissue(20, 5, num_cell_types=2, num_pairs=2, seed=1)
    conv = STAGEDConv(1, 4, num_genes=5, num_cell_types=2, attention=attention,
                      normalize='gate', pair_dim=pair_dim, score_state=score_state,
                      value_channels=3, act=act)
    x = data['gene'].x
    out, att = conv(x, data, return_attention_weights=True)
    zero = torch.zeros(())
    start = torch.tanh(conv.score_activation(zero)) if attention == 'gat' else zero
    if act == 'smooth_leaky_relu' and attention == 'gat':
        assert abs(float(start) - 0.5039) < 1e-4  # the default model's start
    for _, alpha in att.values():
        torch.testing.assert_close(alpha.detach(), start.expand_as(alpha))
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    target = torch.randn_like(out)
    torch.nn.functional.mse_loss(out, target).backward()
    opt.step()
    _, att = conv(x, data, return_attention_weights=True)
    assert all(float(alpha.detach().std()) > 0 for _, alpha in att.values())
    # softmax attention keeps GAT's random start (not uniform)
    soft = STAGEDConv(1, 4, num_genes=5, num_cell_types=2, attention=attention)
    _, att = soft(x, data, return_attention_weights=True)
    alpha = att[REGULATES][1]
    assert float(alpha.detach().std()) > 1e-3
