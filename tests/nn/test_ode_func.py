import pytest
import torch

from torch_staged.nn import STAGEDODEFunc
from torch_staged.testing import perturb_parameters, random_tissue
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
    # (GATv2's signed gates start at 0: every edge needs a non-zero derivative)
    func = perturb_parameters(func).double().set_graph(data)
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


@pytest.mark.parametrize('extra', [dict(), dict(score_state=True, value_embedding=True,
                                                value_channels=0, pair_dim=2,
                                                normalize='gate')])
def test_vector_field_equals_its_formula_float64(extra):
    # the fast path (type-major numbering, MLP first layer by blocks, batched
    # states) against the formula written out in node order with torch.cat
    torch.manual_seed(0)
    data = random_tissue(12, 4, num_cell_types=3, num_pairs=2, seed=5)
    func = STAGEDODEFunc(4, 3, type_dim=2, **extra).double().set_graph(data)
    perturb_parameters(func, 0.2)
    n = data['gene'].num_nodes
    x = torch.randn(n, 1, dtype=torch.float64, requires_grad=True)
    fused = func.graph  # node order
    messages = func.conv(x, data)
    emb = func.conv.node_embedding(fused.gene, fused.node_type, x.dtype)
    z = torch.cat([x, messages, emb], dim=-1)
    ref = torch.empty(n, 1, dtype=torch.float64)
    for v in range(n):
        k = int(fused.node_type[v])
        hidden = torch.tanh(z[v] @ func.weight1[k] + func.bias1[k])
        decay = torch.nn.functional.softplus(func.decay[k, fused.gene[v]])
        ref[v] = hidden @ func.weight2[k] + func.bias2[k] - decay * x[v]
    out = func(torch.tensor(0.0), x)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    params = [x] + [p for p in func.parameters() if p.requires_grad]
    g = torch.autograd.grad(out.sum(), params, allow_unused=True)
    r = torch.autograd.grad(ref.sum(), params, allow_unused=True)
    for a, b in zip(g, r):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-10))
    if not func.conv.score_state:  # a batch of states, one pass
        xs = torch.randn(n, 3, 1, dtype=torch.float64)
        batch = func(torch.tensor(0.0), xs)
        singles = torch.stack([func(torch.tensor(0.0), xs[:, b]) for b in range(3)], 1)
        assert torch.allclose(batch, singles, atol=1e-12, rtol=0)


@pytest.mark.parametrize('backend', ['native', 'sparse'])
def test_compiled_field_compiles_once_over_a_solve(backend):
    # the evaluation count stays outside the compiled code: 50 evaluations of new
    # states on one graph compile once, without graph breaks, and count 50
    import torch._dynamo.utils as dynamo_utils
    torch.manual_seed(0)
    data = random_tissue(12, 4, num_pairs=2, seed=2)
    func = STAGEDODEFunc(4, 3, normalize='gate', score_state=False, pair_dim='full',
                         value_channels=4, value_embedding=False, backend=backend)
    func.set_graph(data)
    x = torch.randn(data['gene'].num_nodes, 3, 1)
    ref = func(torch.tensor(0.0), x)  # eager (and builds the cached layouts)
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    try:
        func.compile_field(backend='eager', fullgraph=True)
        func.nfe = 0
        out = func(torch.tensor(0.0), x)
        for _ in range(49):
            func(torch.tensor(0.0), torch.randn_like(x))
        assert torch.allclose(out, ref, atol=1e-6)
        assert func.nfe == 50
        assert dynamo_utils.counters['stats']['unique_graphs'] == 1  # compiled once
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize('extra', [dict(), dict(heads=2, attention='gatv2'),
                                   dict(score_state=True, normalize='softmax', pair_dim=0,
                                        value_channels=0, value_embedding=True)])
def test_folded_values_equal_the_messages_float64(extra):
    # the value matrices folded into the MLP's first layer (the default) against
    # the field computed from the layer's messages, in outputs and every gradient,
    # for one state, a batch of states and the per-edge Jacobian
    torch.manual_seed(1)
    data = random_tissue(14, 4, num_cell_types=3, num_pairs=2, autocrine=True, seed=3)
    func = STAGEDODEFunc(4, 3, type_dim=2, **extra).double().set_graph(data)
    perturb_parameters(func, 0.2)
    n = data['gene'].num_nodes
    states = [torch.randn(n, 1, dtype=torch.float64)]
    if not func.conv.score_state:
        states.append(torch.randn(n, 3, 1, dtype=torch.float64))
    params = [p for p in func.parameters() if p.requires_grad]
    for x in states:
        outs, grads = [], []
        for fold in (True, False):
            func.fold_values = fold
            x_ = x.clone().requires_grad_()
            out = func(torch.tensor(0.0), x_)
            weight = torch.randn(out.shape, dtype=out.dtype,
                                 generator=torch.Generator().manual_seed(0))
            outs.append(out)
            grads.append(torch.autograd.grad((out * weight).sum(), [x_] + params,
                                             allow_unused=True))
        assert torch.allclose(outs[0], outs[1], atol=1e-12, rtol=0)
        for a, b in zip(*grads):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-11))
    x = states[0]
    func.fold_values = True
    folded = func.edge_jacobian(x)
    func.fold_values = False
    for a, b in zip(folded, func.edge_jacobian(x)):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize('concat,bias', [(True, True), (False, True), (False, False)])
def test_fold_values_of_the_layer(concat, bias):
    from torch_staged.nn import STAGEDConv
    torch.manual_seed(2)
    data = random_tissue(10, 4, num_cell_types=2, seed=4)
    conv = STAGEDConv(1, 3, num_genes=4, num_cell_types=2, heads=2, concat=concat,
                      bias=bias).double()
    perturb_parameters(conv)
    x = torch.randn(data['gene'].num_nodes, 1, dtype=torch.float64)
    out = conv(x, data)
    sources = conv(x, data, apply_values=False)
    assert sources.shape == (x.size(0), 2 * 2 * conv.message_dim)
    again, att = conv(x, data, apply_values=False, return_attention_weights=True)
    assert torch.equal(again, sources) and set(att) == set(RELATIONS)
    W = torch.randn(out.size(-1), 5, dtype=torch.float64)
    node_type = conv.fuse_graph(data).node_type
    for t in range(2):
        rows = node_type == t
        U, bW = conv.fold_values(t, W)
        folded = sources[rows] @ U + (0 if bW is None else bW)
        assert torch.allclose(folded, out[rows] @ W, atol=1e-12, rtol=0)
        assert (bW is None) == (not bias)
