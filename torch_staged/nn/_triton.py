r"""Triton kernels of the CSR aggregation (the GPU path of ``backend='sparse'``).

The same sums as the C++ CPU kernels (:mod:`torch_staged.nn._cpp`), one
program per output row:

* forward, per (slot :math:`s`, head :math:`h`):
  :math:`\mathbf{out}_{s,h} = \sum_{j \in [ptr_s, ptr_{s+1})}
  \alpha_{perm_j, h}\, \mathbf{x}_{col_j}`;
* :math:`\nabla\alpha_{perm_j, h} = \langle \nabla_{s,h}, \mathbf{x}_{col_j}
  \rangle`, per (slot, head);
* :math:`\nabla\mathbf{x}_u = \sum_{j \in [ptr^\top_u, ptr^\top_{u+1})}
  \sum_h \alpha_{perm^\top_j, h}\, \nabla_{col^\top_j, h}`, per source node
  over the transposed layout,

so that every output row is written by one program (no atomics). They run on
CUDA tensors when Triton is installed (``pip install triton``); elsewhere the
aggregation uses cuSPARSE. The tests run them on CPU tensors in Triton's
interpreter (``TRITON_INTERPRET=1``), so their arithmetic is checked on
machines without a GPU; their speed is not measured here.

This module imports :mod:`triton` at import: import it only where Triton is
available (see :func:`available`).
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_E = 32  # edges per step of a program's loop


@triton.jit
def _source_rows(x, col, perm, j0, end, d, d_ok, D, BLOCK_E: tl.constexpr):
    """One step of a slot's loop: the entries ``j0 .. j0 + BLOCK_E`` (below
    :obj:`end`), their edges and their source rows ``[BLOCK_E, BLOCK_D]``.
    """
    j = j0 + tl.arange(0, BLOCK_E)
    j_ok = j < end
    c = tl.load(col + j, mask=j_ok, other=0)
    p = tl.load(perm + j, mask=j_ok, other=0)
    xs = tl.load(x + c[:, None] * D + d[None, :], mask=j_ok[:, None] & d_ok[None, :],
                 other=0.0)
    return j_ok, p, xs


@triton.jit
def _forward_kernel(alpha, x, ptr, col, perm, out, H, D, BLOCK_E: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    s = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    end = tl.load(ptr + s + 1)
    acc = tl.zeros([BLOCK_D], dtype=out.dtype.element_ty)
    for j0 in range(tl.load(ptr + s), end, BLOCK_E):
        j_ok, p, xs = _source_rows(x, col, perm, j0, end, d, d_ok, D, BLOCK_E)
        a = tl.load(alpha + p * H + h, mask=j_ok, other=0.0)
        acc += tl.sum(a[:, None] * xs, axis=0)
    tl.store(out + (s * H + h) * D + d, acc, mask=d_ok)


@triton.jit
def _alpha_grad_kernel(grad, x, ptr, col, perm, grad_alpha, H, D, BLOCK_E: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    s = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    g = tl.load(grad + (s * H + h) * D + d, mask=d_ok, other=0.0)
    end = tl.load(ptr + s + 1)
    for j0 in range(tl.load(ptr + s), end, BLOCK_E):
        j_ok, p, xs = _source_rows(x, col, perm, j0, end, d, d_ok, D, BLOCK_E)
        tl.store(grad_alpha + p * H + h, tl.sum(xs * g[None, :], axis=1), mask=j_ok)


@triton.jit
def _x_grad_kernel(grad, alpha, ptr_t, col_t, perm_t, grad_x, D, H: tl.constexpr,
                   BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    u = tl.program_id(0)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    start = tl.load(ptr_t + u)
    end = tl.load(ptr_t + u + 1)
    acc = tl.zeros([BLOCK_D], dtype=grad_x.dtype.element_ty)
    for j0 in range(start, end, BLOCK_E):
        j = j0 + tl.arange(0, BLOCK_E)
        j_ok = j < end
        seg = tl.load(col_t + j, mask=j_ok, other=0)
        p = tl.load(perm_t + j, mask=j_ok, other=0)
        for h in tl.static_range(H):
            a = tl.load(alpha + p * H + h, mask=j_ok, other=0.0)
            gs = tl.load(grad + (seg[:, None] * H + h) * D + d[None, :],
                         mask=j_ok[:, None] & d_ok[None, :], other=0.0)
            acc += tl.sum(a[:, None] * gs, axis=0)
    tl.store(grad_x + u * D + d, acc, mask=d_ok)


def _block(dim: int) -> int:
    return max(triton.next_power_of_2(dim), 2)


def csr_forward(alpha: Tensor, x: Tensor, ptr: Tensor, col: Tensor, perm: Tensor,
                num_rows: int) -> Tensor:
    """``[S, H, D]`` (see the module docstring)."""
    alpha, x = alpha.contiguous(), x.contiguous()
    H, D = alpha.size(1), x.size(1)
    out = x.new_empty(num_rows, H, D)
    if num_rows and H and D:
        _forward_kernel[(num_rows, H)](alpha, x, ptr, col, perm, out, H, D,
                                       BLOCK_E=BLOCK_E, BLOCK_D=_block(D))
    return out


def csr_backward(grad: Tensor, alpha: Tensor, x: Tensor, ptr: Tensor, col: Tensor,
                 perm: Tensor, ptr_t: Tensor, col_t: Tensor, perm_t: Tensor,
                 need_alpha: bool, need_x: bool) -> Tuple[Tensor, Tensor]:
    """``(grad_alpha, grad_x)``; an empty tensor for a gradient not needed."""
    grad, alpha, x = grad.contiguous(), alpha.contiguous(), x.contiguous()
    H, D = alpha.size(1), x.size(1)
    num_rows, num_nodes = ptr.numel() - 1, ptr_t.numel() - 1
    grad_alpha, grad_x = alpha.new_empty(0), x.new_empty(0)
    if need_alpha:
        grad_alpha = torch.zeros_like(alpha)  # edges of no row keep 0
        if num_rows and H:
            _alpha_grad_kernel[(num_rows, H)](grad, x, ptr, col, perm, grad_alpha, H, D,
                                              BLOCK_E=BLOCK_E, BLOCK_D=_block(D))
    if need_x:
        grad_x = torch.empty_like(x)
        if num_nodes and D:
            _x_grad_kernel[(num_nodes, )](grad, alpha, ptr_t, col_t, perm_t, grad_x, D,
                                          H=H, BLOCK_E=BLOCK_E, BLOCK_D=_block(D))
    return grad_alpha, grad_x
