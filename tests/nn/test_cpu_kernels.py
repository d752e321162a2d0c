"""The compiled CPU kernels against their pure-PyTorch fallbacks (both run in CI)."""
import platform

import pytest
import torch

from torch_staged.nn import STAGEDConv, _cpp
from torch_staged.nn._sparse import _backward, _forward, csr_plan, sparse_aggregate
from torch_staged.nn._typed import reference_backward, reference_forward, typed_linear
from torch_staged.testing import random_tissue
from torch_staged.typing import GENE

needs_kernels = pytest.mark.skipif(not _cpp.cpp_kernels_available(),
                                   reason='no C++ compiler: the fallback is tested alone')


@pytest.fixture
def fallback():
    """The pure-PyTorch code only, for the duration of a test."""
    _cpp.use_cpp_kernels(False)
    yield
    _cpp.use_cpp_kernels(None)


def _layout(num_edges=60, num_nodes=12, num_rows=20, seed=0):
    # rows 0 and 7 and node 3 receive / send nothing (empty rows, an isolated node)
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(num_nodes, (num_edges, ), generator=g)
    src[src == 3] = 4
    seg = torch.randint(num_rows, (num_edges, ), generator=g)
    seg[(seg == 0) | (seg == 7)] = 8
    return src, seg, csr_plan(src, seg, num_rows, num_nodes)


@needs_kernels
@pytest.mark.parametrize('heads,dim', [(1, 1), (1, 9), (3, 4)])
def test_csr_kernel_equals_the_sparse_products(heads, dim):
    src, seg, plan = _layout()
    alpha = torch.randn(src.numel(), heads, dtype=torch.float64)
    x = torch.randn(12, dim, dtype=torch.float64)
    grad = torch.randn(20, heads, dim, dtype=torch.float64)
    ops = _cpp.ops()
    out = ops.csr_aggregate(alpha, x, plan.ptr, plan.col, plan.perm, 20)
    _cpp.use_cpp_kernels(False)
    try:
        ref = _forward(alpha, x, plan.ptr, plan.col, plan.perm, 20)
        ref_a, ref_x = _backward(grad, alpha, x, *plan[:6], 20, True, True)
    finally:
        _cpp.use_cpp_kernels(None)
    # and the obvious loop over edges
    loop = torch.zeros(20, heads, dim, dtype=torch.float64)
    for e in range(src.numel()):
        loop[seg[e]] += alpha[e].unsqueeze(-1) * x[src[e]]
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(out, loop, atol=1e-12)
    assert out[0].abs().max() == 0 and out[7].abs().max() == 0
    grad_a, grad_x = ops.csr_aggregate_backward(grad, alpha, x, *plan[:6], True, True)
    assert torch.allclose(grad_a, ref_a, atol=1e-12)
    assert torch.allclose(grad_x, ref_x, atol=1e-12)
    assert grad_x[3].abs().max() == 0  # the isolated node
    only_x = ops.csr_aggregate_backward(grad, alpha, x, *plan[:6], False, True)
    assert only_x[0].numel() == 0 and torch.allclose(only_x[1], ref_x, atol=1e-12)


@pytest.mark.parametrize('kernels', [pytest.param(True, marks=needs_kernels), False])
def test_csr_aggregate_gradcheck(kernels):
    src, seg, plan = _layout(num_edges=30, num_nodes=8, num_rows=10, seed=1)
    alpha = torch.randn(src.numel(), 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    _cpp.use_cpp_kernels(kernels)
    try:
        assert torch.autograd.gradcheck(lambda a, b: sparse_aggregate(a, b, plan),
                                        (alpha, x))
    finally:
        _cpp.use_cpp_kernels(None)


@pytest.mark.parametrize('kernels', [pytest.param(True, marks=needs_kernels), False])
@pytest.mark.parametrize('num_types,blocks,din,dout', [(3, 2, 9, 16), (1, 1, 3, 5),
                                                       (4, 3, 2, 11)])
def test_typed_linear_matches_a_per_row_product(kernels, num_types, blocks, din, dout):
    g = torch.Generator().manual_seed(0)
    M = 37  # not a multiple of the kernel's 4 rows at a time
    a = torch.randn(M, blocks, din, dtype=torch.float64, generator=g, requires_grad=True)
    kind = torch.randint(num_types, (M, ), generator=g)
    w = torch.randn(num_types, blocks, din, dout, dtype=torch.float64, generator=g,
                    requires_grad=True)
    bias = torch.randn(blocks, dout, dtype=torch.float64, generator=g, requires_grad=True)
    _cpp.use_cpp_kernels(kernels)
    try:
        out = typed_linear(a, kind, w, bias)
        ref = torch.einsum('mbd,mbdc->mbc', a, w[kind]) + bias
        assert torch.allclose(out, ref, atol=1e-12)
        assert torch.autograd.gradcheck(lambda *t: typed_linear(t[0], kind, t[1], t[2]),
                                        (a, w, bias))
        # an expanded gradient (as the backward of a sum gives) is read in place
        grad = torch.ones(1, 1, 1, dtype=torch.float64).expand(M, blocks, dout)
        got = torch.autograd.grad(out, (a, w, bias), grad)
        want = torch.autograd.grad(ref, (a, w, bias), grad)
        assert all(torch.allclose(x, y, atol=1e-12) for x, y in zip(got, want))
    finally:
        _cpp.use_cpp_kernels(None)


@pytest.fixture
def portable():
    """The kernels' portable loops for float32 too, for the duration of a test."""
    _cpp.use_simd(False)
    yield
    _cpp.use_simd(None)


def _float32_both_ways(compute):
    """``compute()`` (tensors of float32) with the vector loops and without."""
    results = []
    for simd in (True, False):
        _cpp.use_simd(simd)
        try:
            results.append([t.clone() for t in compute()])
        finally:
            _cpp.use_simd(None)
    return results


@needs_kernels
@pytest.mark.parametrize('heads,dim', [(1, 9), (2, 3), (1, 21)])
def test_csr_kernel_in_float32_both_ways(heads, dim):
    """The AVX-512 loops (where the CPU has them) give the portable loops' bits
    in float32, and float64's values to float32's precision; dim 21 takes a
    full and a partial vector of 16 lanes."""
    src, seg, plan = _layout(num_edges=200, num_nodes=40, num_rows=30)
    g = torch.Generator().manual_seed(4)
    alpha = torch.randn(src.numel(), heads, generator=g)
    x = torch.randn(40, dim, generator=g)
    grad = torch.randn(30, heads, dim, generator=g)
    ops = _cpp.ops()

    def compute():
        out = ops.csr_aggregate(alpha, x, plan.ptr, plan.col, plan.perm, 30)
        return [out, *ops.csr_aggregate_backward(grad, alpha, x, *plan[:6], True, True)]

    fast, slow = _float32_both_ways(compute)
    exact = [ops.csr_aggregate(alpha.double(), x.double(), plan.ptr, plan.col, plan.perm, 30),
             *ops.csr_aggregate_backward(grad.double(), alpha.double(), x.double(),
                                         *plan[:6], True, True)]
    for f, s, e in zip(fast, slow, exact):
        assert torch.equal(f, s) and torch.allclose(f.double(), e, atol=1e-5)
    assert fast[0][0].abs().max() == 0 and fast[2][3].abs().max() == 0


@needs_kernels
@pytest.mark.parametrize('blocks,din,dout', [(2, 9, 16), (3, 5, 21), (1, 17, 3)])
def test_typed_linear_in_float32_both_ways(blocks, din, dout):
    g = torch.Generator().manual_seed(5)
    M = 103
    a = torch.randn(M, blocks, din, generator=g)
    kind = torch.randint(3, (M, ), generator=g)
    w = torch.randn(3, blocks, din, dout, generator=g)
    bias = torch.randn(blocks, dout, generator=g)
    grad = torch.randn(M, blocks, dout, generator=g)
    ops = _cpp.ops()

    def compute():
        ones = torch.ones(1, 1, 1).expand(M, blocks, dout)  # read in place, stride 0
        return [ops.typed_linear(a, kind, w, bias),
                *ops.typed_linear_backward(grad, a, kind, w, True, True),
                *ops.typed_linear_backward(ones, a, kind, w, True, True)]

    fast, slow = _float32_both_ways(compute)
    ref = torch.einsum('mbd,mbdc->mbc', a.double(), w.double()[kind]) + bias.double()
    grad_a, grad_w = reference_backward(grad.double(), a.double(), kind, w.double(), True,
                                        True)
    exact = [ref, grad_a, grad_w]
    for f, s in zip(fast, slow):
        assert torch.equal(f, s)
    for f, e in zip(fast, exact):
        assert torch.allclose(f.double(), e, atol=1e-4, rtol=1e-5)


@needs_kernels
def test_the_simd_switch(portable):
    assert not _cpp.use_simd(False)  # off: float32 takes the portable loops
    assert _cpp.ops().simd(-1) == 0
    try:
        with open('/proc/cpuinfo') as f:
            has_avx512 = platform.machine() == 'x86_64' and ' avx512f' in f.read()
    except OSError:
        pytest.skip('no /proc/cpuinfo to say what the CPU has')
    assert _cpp.use_simd(True) == has_avx512 == bool(_cpp.ops().simd(-1))


def test_typed_linear_reference_is_the_loop_over_types():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(10, 2, 3, dtype=torch.float64, generator=g)
    kind = torch.tensor([0, 2, 2, 0, 1, 1, 2, 0, 0, 2])
    w = torch.randn(3, 2, 3, 4, dtype=torch.float64, generator=g)
    out = reference_forward(a, kind, w, None)
    assert torch.allclose(out, torch.einsum('mbd,mbdc->mbc', a, w[kind]))
    grad = torch.randn(10, 2, 4, dtype=torch.float64, generator=g)
    grad_a, grad_w = reference_backward(grad, a, kind, w, True, True)
    assert torch.allclose(grad_a, torch.einsum('mbc,mbdc->mbd', grad, w[kind]))
    assert torch.allclose(grad_w[1], torch.einsum('mbd,mbc->bdc', a[4:6], grad[4:6]))


@needs_kernels
@pytest.mark.parametrize('options', [
    dict(normalize='gate', score_state=False, pair_dim='full', value_channels=8,
         value_embedding=False),
    dict(heads=2), dict(heads=2, concat=False), dict(num_cell_types=1)])
@pytest.mark.parametrize('backend', ['sparse', 'native'])
def test_layer_with_kernels_equals_the_layer_without(options, backend):
    options = dict(options)
    types = options.pop('num_cell_types', 3)
    data = random_tissue(num_cells=30, num_genes=6, num_cell_types=types, k=1,
                         regulators=1, seed=3)  # k=1, 1 regulator: empty slots
    conv = STAGEDConv(1, 4, num_genes=6, num_cell_types=types, backend=backend,
                      **options).double()
    x = data[GENE].x.double()
    weight = torch.randn(30 * 6, conv.out_dim, dtype=torch.float64)
    results = []
    for kernels in (False, True):
        _cpp.use_cpp_kernels(kernels)
        try:
            xk = x.clone().requires_grad_()
            conv.zero_grad()
            out = conv(xk, data)
            (out * weight).sum().backward()
            results.append([out.detach(), xk.grad]
                           + [p.grad for p in conv.parameters() if p.grad is not None])
        finally:
            _cpp.use_cpp_kernels(None)
    assert len(results[0]) == len(results[1])
    for slow, fast in zip(*results):
        assert torch.allclose(slow, fast, atol=1e-12, rtol=0)


def test_the_switch_and_the_environment(monkeypatch, fallback):
    assert not _cpp.cpp_kernels_available()  # off for this test
    _cpp.use_cpp_kernels(None)
    monkeypatch.setenv('TORCH_STAGED_CPP', '0')
    assert not _cpp.cpp_kernels_available()
    assert not _cpp.build(verbose=False)  # says so, builds nothing


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    def no_compiler(verbose=False):
        raise RuntimeError('Ninja is required to load C++ extensions')

    monkeypatch.setattr(_cpp, '_build', no_compiler)
    monkeypatch.setattr(_cpp, 'ops', lambda: pytest.fail('the kernels were called'))
    monkeypatch.setitem(_cpp._state, 'loaded', None)
    monkeypatch.setitem(_cpp._state, 'enabled', True)
    monkeypatch.setattr(torch.ops, _cpp.NAME, None, raising=False)  # as in a new process
    with pytest.warns(UserWarning, match='could not be built.*pure-PyTorch'):
        assert not _cpp.cpp_kernels_available()
    assert not _cpp.cpp_kernels_available()  # decided once: no second attempt
    data = random_tissue(num_cells=10, num_genes=4, seed=4)
    conv = STAGEDConv(1, 3, num_genes=4, num_cell_types=3, backend='sparse')
    out = conv(data[GENE].x, data)  # the fallback computes it
    out.sum().backward()
    assert out.shape == (40, conv.out_dim) and torch.isfinite(out).all()


TRITON_CHECK = r'''
import os
os.environ['TRITON_INTERPRET'] = '1'
import torch
from torch_staged.nn import _cpp
from torch_staged.nn._sparse import _backward, _forward, csr_plan
from torch_staged.nn._triton import csr_backward, csr_forward
_cpp.use_cpp_kernels(False)
g = torch.Generator().manual_seed(0)
worst = 0.0
for H, D in [(1, 1), (1, 9), (3, 4), (2, 40)]:
    E, N, S = 70, 12, 20
    src = torch.randint(N, (E, ), generator=g)
    seg = torch.randint(S, (E, ), generator=g)
    seg[seg == 0] = 1  # an empty row
    p = csr_plan(src, seg, S, N)
    alpha = torch.randn(E, H, dtype=torch.float64, generator=g)
    x = torch.randn(N, D, dtype=torch.float64, generator=g)
    grad = torch.randn(S, H, D, dtype=torch.float64, generator=g)
    got = [csr_forward(alpha, x, p.ptr, p.col, p.perm, S),
           *csr_backward(grad, alpha, x, *p[:6], True, True)]
    want = [_forward(alpha, x, p.ptr, p.col, p.perm, S),
            *_backward(grad, alpha, x, *p[:6], S, True, True)]
    worst = max([worst] + [(a - b).abs().max().item() for a, b in zip(got, want)])
print('WORST', worst)
'''


def test_triton_kernels_in_the_interpreter(tmp_path):
    # the GPU path's arithmetic, on CPU tensors in Triton's interpreter
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec('triton') is None:
        pytest.skip('triton is not installed')
    script = tmp_path / 'check.py'
    script.write_text(TRITON_CHECK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    worst = float(proc.stdout.split('WORST')[-1])
    assert worst < 1e-12
