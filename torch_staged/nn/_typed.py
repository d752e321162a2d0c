r"""Per-row block matrices chosen by a row's type, as one custom operator.

.. math::
    \mathbf{out}_{m,b} = \mathbf{a}_{m,b}\, \mathbf{W}_{\tau(m), b}
    \;(+\, \mathbf{c}_b), \qquad
    \nabla \mathbf{a}_{m,b} = \nabla_{m,b} \mathbf{W}_{\tau(m),b}^\top, \quad
    \nabla \mathbf{W}_{k,b} = \sum_{m:\, \tau(m) = k} \mathbf{a}_{m,b}^\top
    \nabla_{m,b}

for ``a [M, B, D_in]``, ``type [M]``, ``W [K, B, D_in, D_out]`` and an
optional ``bias [B, D_out]``: how :class:`~torch_staged.nn.STAGEDConv` applies
its value matrices :math:`\mathbf{V}_{r,\tau}` (one block per relation and
head) to gene nodes in any order, without reordering the nodes by cell type.
The compiled CPU kernel (:mod:`torch_staged.nn._cpp`) loops over rows; the
reference (other devices, or without the kernels) loops over the types.
"""
from typing import List, Optional

import torch
from torch import Tensor

from torch_staged.nn import _cpp


def use_kernel(t: Tensor) -> bool:
    """Whether the compiled CPU kernels take tensors like :obj:`t`."""
    return (t.device.type == 'cpu' and t.dtype in (torch.float32, torch.float64)
            and _cpp.cpp_kernels_available())


def _rows_of_type(type: Tensor, num_types: int) -> List[Tensor]:
    return [(type == k).nonzero().view(-1) for k in range(num_types)]


def reference_forward(a: Tensor, type: Tensor, w: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
    """The loop over types (any device)."""
    out = a.new_empty(a.size(0), a.size(1), w.size(-1))
    for k, rows in enumerate(_rows_of_type(type, w.size(0))):
        out[rows] = torch.einsum('mbd,bdc->mbc', a[rows], w[k])
    return out if bias is None else out + bias


def reference_backward(grad: Tensor, a: Tensor, type: Tensor, w: Tensor, need_a: bool,
                       need_w: bool) -> List[Tensor]:
    grad_a = torch.empty_like(a) if need_a else a.new_empty(0)
    grad_w = torch.empty_like(w) if need_w else w.new_empty(0)
    for k, rows in enumerate(_rows_of_type(type, w.size(0))):
        if need_a:
            grad_a[rows] = torch.einsum('mbc,bdc->mbd', grad[rows], w[k])
        if need_w:
            grad_w[k] = torch.einsum('mbd,mbc->bdc', a[rows], grad[rows])
    return [grad_a, grad_w]


#: typed_linear needs torch.library.custom_op (torch >= 2.4); STAGEDConv
#: loops over the cell types otherwise
CUSTOM_OP = hasattr(torch.library, 'custom_op')

if CUSTOM_OP:
    @torch.library.custom_op('torch_staged::typed_linear', mutates_args=())
    def _typed_linear(a: Tensor, type: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
        if use_kernel(a):
            return _cpp.ops().typed_linear(a, type, w, bias)
        return reference_forward(a, type, w, bias)


    @_typed_linear.register_fake
    def _(a, type, w, bias):
        return a.new_empty(a.size(0), a.size(1), w.size(-1))


    @torch.library.custom_op('torch_staged::typed_linear_backward', mutates_args=())
    def _typed_linear_backward(grad: Tensor, a: Tensor, type: Tensor, w: Tensor,
                               need_a: bool, need_w: bool) -> List[Tensor]:
        if use_kernel(a):
            return list(_cpp.ops().typed_linear_backward(grad, a, type, w, need_a, need_w))
        return reference_backward(grad, a, type, w, need_a, need_w)


    @_typed_linear_backward.register_fake
    def _(grad, a, type, w, need_a, need_w):
        return [a.new_empty(a.shape if need_a else (0, )),
                w.new_empty(w.shape if need_w else (0, ))]


    def _setup_context(ctx, inputs, output):
        a, type, w, bias = inputs
        ctx.save_for_backward(a, type, w)
        ctx.has_bias = bias is not None


    def _backward(ctx, grad):
        a, type, w = ctx.saved_tensors
        need_a, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_a, grad_w = _typed_linear_backward(grad, a, type, w, need_a, need_w)
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_a if need_a else None, None, grad_w if need_w else None, grad_bias


    _typed_linear.register_autograd(_backward, setup_context=_setup_context)


def typed_linear(a: Tensor, type: Tensor, w: Tensor, bias: Optional[Tensor] = None
                 ) -> Tensor:
    r"""``[M, B, D_out]``: :math:`\mathbf{a}_{m,b} \mathbf{W}_{\tau(m),b}
    (+ \mathbf{c}_b)` for ``a [M, B, D_in]``, ``type [M]`` (int64),
    ``w [K, B, D_in, D_out]`` and ``bias [B, D_out]``.
    """
    return _typed_linear(a.contiguous(), type.contiguous(), w.contiguous(),
                         None if bias is None else bias.contiguous())
