r"""The attention-weighted aggregation over a CSR layout, one custom operator:
a compiled C++ loop over the rows on CPU (:mod:`torch_staged.nn._cpp`), else
sparse x dense products (:mod:`torch.sparse`: MKL on CPU, cuSPARSE on GPU), or
on GPU the Triton kernels of :mod:`torch_staged.nn._triton` with
``TORCH_STAGED_TRITON=1``.

.. math::
    \mathbf{out}_{s,h} = \sum_{e:\, seg_e = s} \alpha_{e,h}\, \mathbf{x}_{src_e}
    = (\mathbf{A}_h \mathbf{X})_s, \qquad (\mathbf{A}_h)_{s,u} = \alpha_{e,h}

Backward: :math:`\nabla\mathbf{X} = \sum_h \mathbf{A}_h^\top \nabla_h` (the
transposed CSR layout, built once per graph) and :math:`\nabla\alpha_{e,h} =
\langle \nabla_{h, seg_e}, \mathbf{x}_{src_e} \rangle`, a sampled dense-dense
product (SDDMM, :func:`torch.sparse.sampled_addmm`) on the CSR pattern. Only
:math:`\alpha`, :math:`\mathbf{X}` and the index layouts are saved.

With ``torch.library.custom_op`` (torch >= 2.4) the forward and the backward
are the operators ``torch_staged::csr_aggregate`` and
``torch_staged::csr_aggregate_backward``, so that :func:`torch.compile` traces
one opaque op (no graph break) and autograd sees one node; older torch uses the
same kernels through a :class:`torch.autograd.Function`.
"""
import os
import warnings
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from torch_staged.nn import _cpp
from torch_staged.nn._typed import use_kernel


class CSRPlan(NamedTuple):
    """The sparse layouts of one edge set: rows (segments) in CSR with sorted
    columns (sources), and the transpose.

    Attributes:
        ptr, col, perm: CSR pointer ``[S + 1]``, columns ``[E]`` and the edge of
            each stored entry ``[E]`` (edges sorted by segment, then source).
        ptr_t, col_t, perm_t: the same for the transpose (sorted by source,
            then segment).
        num_segments, num_nodes: the matrix shape.
    """
    ptr: Tensor
    col: Tensor
    perm: Tensor
    ptr_t: Tensor
    col_t: Tensor
    perm_t: Tensor
    num_segments: int
    num_nodes: int


def csr_plan(src: Tensor, seg: Tensor, num_segments: int, num_nodes: int) -> CSRPlan:
    """Builds the :class:`CSRPlan` of edges ``src -> seg`` (once per graph)."""
    def layout(rows: Tensor, cols: Tensor, num_rows: int, num_cols: int):
        perm = torch.argsort(rows * num_cols + cols, stable=True)
        counts = torch.bincount(rows, minlength=num_rows)
        ptr = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
        ptr[1:] = counts.cumsum(0)
        return ptr, cols.index_select(0, perm), perm
    ptr, col, perm = layout(seg, src, num_segments, num_nodes)
    ptr_t, col_t, perm_t = layout(src, seg, num_nodes, num_segments)
    return CSRPlan(ptr, col, perm, ptr_t, col_t, perm_t, num_segments, num_nodes)


def _csr(ptr: Tensor, col: Tensor, values: Tensor, size: Tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "beta state" / invariant-check notices
        warnings.simplefilter('ignore', UserWarning)
        return torch.sparse_csr_tensor(ptr, col, values.contiguous(), size=size)


def _triton_kernels(x: Tensor):
    """The Triton kernels (:mod:`torch_staged.nn._triton`) for a CUDA tensor when
    asked for with ``TORCH_STAGED_TRITON=1`` and Triton is installed, else
    :obj:`None` (cuSPARSE). Opt-in: they are checked in Triton's interpreter, not
    yet timed on a GPU.
    """
    if not x.is_cuda or os.environ.get('TORCH_STAGED_TRITON', '0') != '1':
        return None
    try:
        from torch_staged.nn import _triton
    except ImportError:
        return None
    return _triton


def _forward(alpha: Tensor, x: Tensor, ptr: Tensor, col: Tensor, perm: Tensor,
             num_segments: int) -> Tensor:
    kernels = _triton_kernels(x)
    if kernels is not None:
        return kernels.csr_forward(alpha, x, ptr, col, perm, num_segments)
    if use_kernel(x):  # one C++ loop over the rows
        return _cpp.ops().csr_aggregate(alpha.contiguous(), x.contiguous(), ptr, col, perm,
                                        num_segments)
    size = (num_segments, x.size(0))
    heads = [_csr(ptr, col, alpha[:, h].index_select(0, perm), size) @ x
             for h in range(alpha.size(1))]
    return heads[0].unsqueeze(1) if len(heads) == 1 else torch.stack(heads, dim=1)


def _backward(grad: Tensor, alpha: Tensor, x: Tensor, ptr: Tensor, col: Tensor,
              perm: Tensor, ptr_t: Tensor, col_t: Tensor, perm_t: Tensor,
              num_segments: int, need_alpha: bool, need_x: bool
              ) -> Tuple[Tensor, Tensor]:
    """``(grad_alpha, grad_x)``; an empty tensor for a gradient not needed."""
    kernels = _triton_kernels(x)
    if kernels is not None:
        return kernels.csr_backward(grad, alpha, x, ptr, col, perm, ptr_t, col_t, perm_t,
                                    need_alpha, need_x)
    if use_kernel(x):  # C++ loops over the rows and over the sources (transposed)
        return tuple(_cpp.ops().csr_aggregate_backward(
            grad.contiguous(), alpha.contiguous(), x.contiguous(), ptr, col, perm, ptr_t,
            col_t, perm_t, need_alpha, need_x))
    grad_alpha, grad_x = alpha.new_empty(0), x.new_empty(0)
    if need_alpha:  # SDDMM on the CSR pattern
        pattern = _csr(ptr, col, alpha.new_ones(col.numel()), (num_segments, x.size(0)))
        grad_alpha = torch.empty_like(alpha)
        for h in range(alpha.size(1)):
            values = torch.sparse.sampled_addmm(pattern, grad[:, h].contiguous(), x.t(),
                                                beta=0.0).values()
            grad_alpha[perm, h] = values
    if need_x:
        size = (x.size(0), num_segments)
        grad_x = sum(_csr(ptr_t, col_t, alpha[:, h].index_select(0, perm_t), size)
                     @ grad[:, h].contiguous() for h in range(alpha.size(1)))
    return grad_alpha, grad_x


CUSTOM_OP = hasattr(torch.library, 'custom_op')

if CUSTOM_OP:
    @torch.library.custom_op('torch_staged::csr_aggregate', mutates_args=())
    def _csr_aggregate(alpha: Tensor, x: Tensor, ptr: Tensor, col: Tensor, perm: Tensor,
                       ptr_t: Tensor, col_t: Tensor, perm_t: Tensor,
                       num_segments: int) -> Tensor:
        return _forward(alpha, x, ptr, col, perm, num_segments)

    @_csr_aggregate.register_fake
    def _(alpha, x, ptr, col, perm, ptr_t, col_t, perm_t, num_segments):
        return x.new_empty(num_segments, alpha.size(1), x.size(1))

    @torch.library.custom_op('torch_staged::csr_aggregate_backward', mutates_args=())
    def _csr_aggregate_backward(grad: Tensor, alpha: Tensor, x: Tensor, ptr: Tensor,
                                col: Tensor, perm: Tensor, ptr_t: Tensor, col_t: Tensor,
                                perm_t: Tensor, num_segments: int, need_alpha: bool,
                                need_x: bool) -> List[Tensor]:
        return list(_backward(grad, alpha, x, ptr, col, perm, ptr_t, col_t, perm_t,
                              num_segments, need_alpha, need_x))

    @_csr_aggregate_backward.register_fake
    def _(grad, alpha, x, ptr, col, perm, ptr_t, col_t, perm_t, num_segments,
          need_alpha, need_x):
        return [alpha.new_empty(alpha.shape if need_alpha else (0, )),
                x.new_empty(x.shape if need_x else (0, ))]

    def _setup_context(ctx, inputs, output):
        alpha, x, *layout, num_segments = inputs
        ctx.save_for_backward(alpha, x, *layout)
        ctx.num_segments = num_segments

    def _autograd_backward(ctx, grad):
        alpha, x, *layout = ctx.saved_tensors
        need_alpha, need_x = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_alpha, grad_x = _csr_aggregate_backward(
            grad, alpha, x, *layout, ctx.num_segments, need_alpha, need_x)
        return ((grad_alpha if need_alpha else None, grad_x if need_x else None)
                + (None, ) * 7)

    _csr_aggregate.register_autograd(_autograd_backward, setup_context=_setup_context)


class SparseAggregate(torch.autograd.Function):
    """The same kernels as an autograd function (torch without ``custom_op``)."""

    @staticmethod
    def forward(ctx, alpha: Tensor, x: Tensor, plan: CSRPlan) -> Tensor:
        ctx.save_for_backward(alpha, x)
        ctx.plan = plan
        return _forward(alpha, x, plan.ptr, plan.col, plan.perm, plan.num_segments)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        alpha, x = ctx.saved_tensors
        p = ctx.plan
        need_alpha, need_x = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_alpha, grad_x = _backward(grad, alpha, x, p.ptr, p.col, p.perm, p.ptr_t,
                                       p.col_t, p.perm_t, p.num_segments, need_alpha,
                                       need_x)
        return grad_alpha if need_alpha else None, grad_x if need_x else None, None


def sparse_aggregate(alpha: Tensor, x: Tensor, plan: CSRPlan,
                     use_custom_op: Optional[bool] = None) -> Tensor:
    r"""``[S, H, D]``: :math:`\sum_{e:\, seg_e = s} \alpha_{e,h}\, \mathbf{x}_{src_e}`
    for ``alpha [E, H]``, ``x [N, D]`` and the :obj:`plan` of :func:`csr_plan`
    (the custom operator when available, else the autograd function).
    """
    if CUSTOM_OP if use_custom_op is None else use_custom_op:
        return _csr_aggregate(alpha, x, plan.ptr, plan.col, plan.perm, plan.ptr_t,
                              plan.col_t, plan.perm_t, plan.num_segments)
    return SparseAggregate.apply(alpha, x, plan)
