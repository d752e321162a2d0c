r"""Edge templates: the static scores of many edges computed once.

With static scores (``score_state=False``) the score of a fused edge
:math:`e = (u \to v)` of group :math:`k` (relation and target type) depends on
the state of no node, only on

.. math::
    (k,\ \tau(u),\ g(u),\ g(v),\ \mathbf{a}_e),

the group, the source's cell type and gene, the target's gene and the edge's
attributes. Every cell of a type repeats the same gene -> gene edges of the GRN
prior, so the :math:`E` edges share far fewer distinct *templates* :math:`T`
(here: one per prior edge and cell type, plus one per cross-cell edge with a
non-zero attribute such as a distance). The layer computes the coefficients of
one representative edge per template and gathers them to all edges: one
``[E]`` gather in the forward and one scatter in the backward instead of the
per-edge score arithmetic. The result is exactly that of the per-edge
computation (the same operations on the same values).
"""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

#: Templates are used only if they cut the edges at least this much.
MAX_TEMPLATE_FRACTION = 0.5


class EdgeTemplates(NamedTuple):
    r"""The representative edge of every template and the template of every
    edge (built by :func:`edge_templates`, cached per graph by the layer), and
    the per-edge inputs of the scores at the representatives (filled in by
    the layer, since they are fixed for a graph as well).

    Attributes:
        rep (Tensor): ``[T]`` fused edge index of each template's representative.
        inverse (Tensor): ``[E]`` template of every fused edge.
        src (Tensor, optional): ``[T]`` source gene node of each representative.
        slot (Tensor, optional): ``[T]`` target slot of each representative.
        key (Tensor, optional): ``[T]`` group of each representative.
        edge_attr (Tensor, optional): ``[T, D_e]`` its attributes.
        pair_rows (tuple, optional): ``([T], [T])`` its gene-pair table rows.
        src_row (Tensor, optional): ``[T]`` row :math:`g(u) K + \tau(u)` of its
            source in the table of embeddings per (gene, cell type).
        slot_row (Tensor, optional): ``[T]`` its target slot in that table,
            :math:`(g(v) K + \tau(v)) R + r`.
    """
    rep: Tensor
    inverse: Tensor
    src: Optional[Tensor] = None
    slot: Optional[Tensor] = None
    key: Optional[Tensor] = None
    edge_attr: Optional[Tensor] = None
    pair_rows: Optional[Tuple[Tensor, Tensor]] = None
    src_row: Optional[Tensor] = None
    slot_row: Optional[Tensor] = None

    @property
    def num_templates(self) -> int:
        return self.rep.numel()


def edge_templates(src: Tensor, key: Tensor, edge_attr: Optional[Tensor],
                   gene: Tensor, node_type: Tensor, dst_node: Tensor,
                   num_groups: int, num_types: int, num_genes: int
                   ) -> Optional[EdgeTemplates]:
    r"""Groups the fused edges by :math:`(k, \tau(u), g(u), g(v))`; an edge
    with a non-zero attribute is its own template.

    Args:
        src (Tensor): ``[E]`` source gene node of every edge.
        key (Tensor): ``[E]`` group :math:`k` of every edge.
        edge_attr (Tensor, optional): ``[E, D_e]`` edge attributes.
        gene (Tensor): ``[N*G]`` gene of every gene node.
        node_type (Tensor): ``[N*G]`` cell type of every gene node.
        dst_node (Tensor): ``[E]`` target gene node of every edge.
        num_groups (int): Number of groups :math:`R K`.
        num_types (int): Number of cell types :math:`K`.
        num_genes (int): Number of genes :math:`G`.

    Returns:
        The templates, or :obj:`None` when they would not cut the edges to at
        most :data:`MAX_TEMPLATE_FRACTION` of :math:`E` (or there are none).
    """
    num_edges = src.numel()
    if num_edges == 0:
        return None
    G = num_genes
    code = ((key * num_types + node_type.index_select(0, src)) * G
            + gene.index_select(0, src)) * G + gene.index_select(0, dst_node)
    if edge_attr is not None and edge_attr.numel():
        own = (edge_attr != 0).any(dim=1)
        offset = num_groups * num_types * G * G
        code = torch.where(own, offset + torch.arange(num_edges, device=src.device),
                           code)
    uniq, inverse = torch.unique(code, return_inverse=True)
    if uniq.numel() > MAX_TEMPLATE_FRACTION * num_edges:
        return None
    rep = torch.full((uniq.numel(),), num_edges, dtype=torch.long, device=src.device)
    rep.scatter_reduce_(0, inverse, torch.arange(num_edges, device=src.device), 'amin')
    return EdgeTemplates(rep, inverse)


def select_edges(rep: Tensor, *tensors: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    """The rows :obj:`rep` of every per-edge tensor (:obj:`None` stays)."""
    return tuple(None if t is None else t.index_select(0, rep) for t in tensors)
