"""The fused, sorted, cached edge structure of both gene -> gene relations."""
from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from torch_staged.typing import CELL, GENE, RELATIONS, EdgeType


class _PermuteRows(torch.autograd.Function):
    """``x[perm]`` for a permutation, whose backward is the gather
    ``grad[inverse]`` (no zero-filled buffer and scatter, as for
    :meth:`~torch.Tensor.index_select`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        if x.dim() <= 2:
            return x.index_select(0, perm)
        # rows as flat vectors: the 2-D gather is several times faster
        return x.reshape(x.size(0), -1).index_select(0, perm).view(x.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse, ) = ctx.saved_tensors
        return _PermuteRows.apply(grad, inverse, torch.empty(0)), None, None


def permute_rows(x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:
    """Rows of :obj:`x` in the order :obj:`perm` (a permutation with inverse
    :obj:`inverse`), with a gather as the backward pass.
    """
    return _PermuteRows.apply(x, perm, inverse)


class FusedGeneGraph(NamedTuple):
    r"""Both gene -> gene relations merged into one edge list sorted by target slot.

    A *slot* is a (target gene node, relation) pair, ``slot = dst * R + r``; the
    softmax of :class:`~torch_staged.nn.STAGEDConv` runs over the edges of a slot.
    Built once per graph by :func:`fuse_gene_graph` (the graph is static during an
    ODE solve) and reused by every evaluation.

    Attributes:
        edge_index (Tensor): ``[2, E]`` rows (source gene node, target slot
            ``dst * R + relation``), slots nondecreasing.
        key (Tensor): ``[E]`` parameter group ``relation * K + target cell type``.
        edge_attr (Tensor): ``[E, D_e]`` edge attributes (zeros for a relation
            without attributes); ``[E, 0]`` when there are none.
        slot_ptr (Tensor): ``[N*G*R + 1]`` CSR pointer of the slots.
        perm (Tensor): ``[E]`` position of each fused edge in the concatenation
            of the relations' own edge lists (to report per-relation results).
        gene (Tensor): ``[N*G]`` gene index of every gene node.
        node_type (Tensor): ``[N*G]`` cell type of every gene node.
        type_perm (Tensor): ``[N*G]`` gene nodes grouped by cell type.
        type_rank (Tensor): ``[N*G]`` inverse of :obj:`type_perm`.
        type_sizes (tuple of int): number of gene nodes of each cell type.
        rel_sizes (tuple of int): number of edges of each relation.
        num_cell_types (int): :math:`K`.
        grouped (bool): whether the gene nodes are numbered type by type (then
            :obj:`type_perm` is the identity and :meth:`per_type` takes slices;
            see :meth:`type_major`).
    """
    edge_index: Tensor
    key: Tensor
    edge_attr: Tensor
    slot_ptr: Tensor
    perm: Tensor
    gene: Tensor
    node_type: Tensor
    type_perm: Tensor
    type_rank: Tensor
    type_sizes: Tuple[int, ...]
    rel_sizes: Tuple[int, ...]
    num_cell_types: int
    grouped: bool = False

    @property
    def src(self) -> Tensor:
        """``[E]`` source gene node of each edge."""
        return self.edge_index[0]

    @property
    def slot(self) -> Tensor:
        """``[E]`` target slot ``dst * R + relation`` of each edge (sorted)."""
        return self.edge_index[1]

    @property
    def num_edges(self) -> int:
        """Total number of edges :math:`E`."""
        return self.edge_index.size(1)

    @property
    def num_nodes(self) -> int:
        r"""Number of gene nodes :math:`N \cdot G`."""
        return self.gene.numel()

    @property
    def num_relations(self) -> int:
        """Number of relations :math:`R`."""
        return len(self.rel_sizes)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> 'FusedGeneGraph':
        """Moves the index tensors to :obj:`device` and casts the edge attributes
        to :obj:`dtype`.
        """
        fields = {}
        for name, value in self._asdict().items():
            if isinstance(value, Tensor):
                value = value.to(device)
                if name == 'edge_attr' and dtype is not None:
                    value = value.to(dtype)
            fields[name] = value
        return FusedGeneGraph(**fields)

    def repeat(self, copies: int) -> 'FusedGeneGraph':
        r"""The block-diagonal union of :obj:`copies` copies of this graph (copy
        :math:`c` holds gene nodes :math:`c \cdot NG, \dots, (c + 1) NG - 1`), so
        that :math:`C` independent states of the same tissue are one state
        ``[C*N*G, F]``. Each relation's edges are listed copy after copy.
        """
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(f"'copies' must be a positive integer (got {copies!r})")
        if copies == 1:
            return self
        nodes, edges, R = self.num_nodes, self.num_edges, self.num_relations
        offset = torch.arange(copies, device=self.gene.device).view(-1, 1)
        src = (self.src.view(1, -1) + offset * nodes).reshape(-1)
        slot = (self.slot.view(1, -1) + offset * (nodes * R)).reshape(-1)
        ptr = (self.slot_ptr[:-1].view(1, -1) + offset * edges).reshape(-1)
        ptr = torch.cat([ptr, ptr.new_full((1, ), copies * edges)])
        # position of an edge in its relation's list, then in the new lists
        sizes = torch.tensor(self.rel_sizes, device=self.perm.device)
        starts = torch.cumsum(sizes, 0) - sizes
        rel = torch.bucketize(self.perm, torch.cumsum(sizes, 0), right=True)
        within = self.perm - starts[rel]
        perm = (starts[rel] * copies + offset * sizes[rel] + within).reshape(-1)
        type_perm, begin = [], 0
        for size in self.type_sizes:
            part = self.type_perm[begin:begin + size]
            type_perm.append((part.view(1, -1) + offset * nodes).reshape(-1))
            begin += size
        type_perm = torch.cat(type_perm)
        type_rank = torch.empty_like(type_perm)
        type_rank[type_perm] = torch.arange(type_perm.numel(), device=type_perm.device)
        return FusedGeneGraph(  # copies interleave the types: not grouped
            edge_index=torch.stack([src, slot]), key=self.key.repeat(copies),
            edge_attr=self.edge_attr.repeat(copies, 1), slot_ptr=ptr, perm=perm,
            gene=self.gene.repeat(copies), node_type=self.node_type.repeat(copies),
            type_perm=type_perm, type_rank=type_rank,
            type_sizes=tuple(s * copies for s in self.type_sizes),
            rel_sizes=tuple(s * copies for s in self.rel_sizes),
            num_cell_types=self.num_cell_types)

    def type_major(self) -> 'FusedGeneGraph':
        r"""The same graph with its gene nodes renumbered type by type: node
        :math:`v` becomes :obj:`type_rank[v]`, so that the rows of each cell
        type are one slice (:attr:`grouped`) and per-type weights need no
        gather. States move between the numberings with :obj:`type_perm`
        (to this one: ``x[type_perm]``) and :obj:`type_rank` (back). Each
        relation keeps its own edge order (:meth:`unfuse`).
        """
        if self.grouped:
            return self
        R, rank = self.num_relations, self.type_rank
        relation = torch.remainder(self.slot, R)
        dst = torch.div(self.slot, R, rounding_mode='floor')
        src, slot = rank.index_select(0, self.src), rank.index_select(0, dst) * R + relation
        order = torch.argsort(slot, stable=True)
        slot = slot.index_select(0, order)
        counts = torch.bincount(slot, minlength=self.num_nodes * R)
        ptr = torch.zeros_like(self.slot_ptr)
        ptr[1:] = counts.cumsum(0)
        identity = torch.arange(self.num_nodes, device=self.gene.device)
        return FusedGeneGraph(
            edge_index=torch.stack([src.index_select(0, order), slot]),
            key=self.key.index_select(0, order),
            edge_attr=self.edge_attr.index_select(0, order), slot_ptr=ptr,
            perm=self.perm.index_select(0, order),
            gene=self.gene.index_select(0, self.type_perm),
            node_type=self.node_type.index_select(0, self.type_perm),
            type_perm=identity, type_rank=identity, type_sizes=self.type_sizes,
            rel_sizes=self.rel_sizes, num_cell_types=self.num_cell_types, grouped=True)

    def per_type(self, value: Union[Tensor, Tuple[Optional[Tensor], ...]], fn) -> Tensor:
        """Applies ``fn(cell_type, rows)`` to the rows of :obj:`value` (one row per
        gene node) of each cell type and returns the results in node order. With
        a tuple of tensors (or :obj:`None`), ``fn(cell_type, *rows)`` gets the
        rows of each.

        A loop over cell types only: this is how per-type weights are "applied
        per segment".
        """
        values = value if isinstance(value, tuple) else (value, )
        present = [(t, size) for t, size in enumerate(self.type_sizes) if size > 0]
        if len(present) == 1:  # one cell type: no reordering at all
            return fn(present[0][0], *values)
        if not self.grouped:  # one permutation to type-major order (gathers both ways)
            values = tuple(v if v is None else permute_rows(v, self.type_perm,
                                                            self.type_rank)
                           for v in values)
        # slices per type (split, not narrow: its backward concatenates, no zero fill)
        sizes = [size for _, size in present]
        chunks = [[None] * len(present) if v is None else v.split(sizes, dim=0)
                  for v in values]
        out = torch.cat([fn(t, *rows) for (t, _), *rows in zip(present, *chunks)])
        return out if self.grouped else permute_rows(out, self.type_rank, self.type_perm)

    def unfuse(self, value: Tensor) -> Tuple[Tensor, ...]:
        """Splits a per-edge tensor in fused order into one tensor per relation,
        each in that relation's own edge order.
        """
        out = torch.empty_like(value)
        out[self.perm] = value
        return tuple(out.split(list(self.rel_sizes), dim=0))

    def relation_edge_index(self) -> Tuple[Tensor, ...]:
        """The ``[2, E_r]`` edge index of each relation, in its own order."""
        dst = torch.div(self.slot, self.num_relations, rounding_mode='floor')
        both = self.unfuse(torch.stack([self.src, dst], dim=1))
        return tuple(e.t() for e in both)


def _merge_positions(keys: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Positions of each sorted key list in the merge of all of them (stable:
    ties keep list order), computed with ``searchsorted`` instead of a sort.
    """
    out = []
    for i, key in enumerate(keys):
        pos = torch.arange(key.numel(), device=key.device)
        for j, other in enumerate(keys):
            if j != i and other.numel() > 0:
                pos = pos + torch.searchsorted(other, key, right=j < i)
        out.append(pos)
    return tuple(out)


def fuse_gene_graph(
    edge_index_dict: Dict[EdgeType, Tensor],
    node_cell_type: Tensor,
    gene: Tensor,
    num_cell_types: int,
    edge_attr_dict: Optional[Dict[EdgeType, Tensor]] = None,
    edge_dim: int = 0,
    relations: Tuple[EdgeType, ...] = RELATIONS,
) -> FusedGeneGraph:
    r"""Merges the gene -> gene relations into one :class:`FusedGeneGraph`.

    Args:
        edge_index_dict (dict): ``[2, E_r]`` edge index per relation (missing
            relations count as empty).
        node_cell_type (Tensor): ``[N*G]`` cell type of every gene node.
        gene (Tensor): ``[N*G]`` gene index of every gene node.
        num_cell_types (int): :math:`K`.
        edge_attr_dict (dict, optional): ``[E_r, D_e]`` attributes per relation.
        edge_dim (int, optional): :math:`D_e`; relations without attributes get
            zeros. (default: :obj:`0`)
        relations (tuple, optional): The relations in parameter order.
    """
    num_nodes = node_cell_type.numel()
    num_rel = len(relations)
    device = node_cell_type.device
    edge_attr_dict = edge_attr_dict or {}
    srcs, slots, keys, attrs = [], [], [], []
    for r, rel in enumerate(relations):
        ei = edge_index_dict.get(rel)
        if ei is None:
            ei = torch.empty(2, 0, dtype=torch.long, device=device)
        if ei.dim() != 2 or ei.size(0) != 2:
            raise ValueError(f"The edge index of {rel} must have shape [2, E] "
                             f"(got {list(ei.shape)})")
        ei = ei.to(device=device, dtype=torch.long)
        if ei.numel() > 0 and (int(ei.min()) < 0 or int(ei.max()) >= num_nodes):
            raise ValueError(f"The edge index of {rel} refers to gene nodes outside "
                             f"0..{num_nodes - 1}")
        src, dst = ei[0], ei[1]
        slot = dst * num_rel + r
        if slot.numel() > 1 and not bool((slot[1:] >= slot[:-1]).all()):
            order = torch.sort(slot, stable=True).indices
        else:
            order = None
        attr = edge_attr_dict.get(rel)
        if edge_dim > 0:
            if attr is None:
                attr = torch.zeros(src.numel(), edge_dim, device=device)
            if attr.dim() == 1:
                attr = attr.view(-1, 1)
            if attr.dim() != 2 or attr.size(0) != src.numel():
                raise ValueError(f"The edge attributes of {rel} must have shape "
                                 f"[{src.numel()}, {edge_dim}] (got {list(attr.shape)})")
            if attr.size(1) != edge_dim:
                raise ValueError(f"The edge attributes of {rel} have {attr.size(1)} "
                                 f"columns, but the layer expects edge_dim={edge_dim}")
        else:
            attr = torch.zeros(src.numel(), 0, device=device)
        local = torch.arange(src.numel(), device=device)
        if order is not None:
            src, slot, attr, local = src[order], slot[order], attr[order], local[order]
        srcs.append(src)
        slots.append(slot)
        keys.append(r * num_cell_types + node_cell_type[torch.div(
            slot, num_rel, rounding_mode='floor')])
        attrs.append((attr, local))

    sizes = tuple(s.numel() for s in srcs)
    offsets = [0]
    for s in sizes[:-1]:
        offsets.append(offsets[-1] + s)
    total = sum(sizes)
    positions = _merge_positions(tuple(slots))
    fused_index = torch.empty(2, total, dtype=torch.long, device=device)
    src_all, slot_all = fused_index[0], fused_index[1]
    key_all = torch.empty(total, dtype=torch.long, device=device)
    perm = torch.empty(total, dtype=torch.long, device=device)
    attr_all = torch.empty(total, edge_dim, device=device,
                           dtype=attrs[0][0].dtype if attrs else torch.float)
    for r in range(num_rel):
        pos = positions[r]
        src_all[pos] = srcs[r]
        slot_all[pos] = slots[r]
        key_all[pos] = keys[r]
        attr_all[pos] = attrs[r][0].to(attr_all.dtype)
        perm[pos] = attrs[r][1] + offsets[r]

    counts = torch.bincount(slot_all, minlength=num_nodes * num_rel)
    slot_ptr = torch.zeros(num_nodes * num_rel + 1, dtype=torch.long, device=device)
    torch.cumsum(counts, 0, out=slot_ptr[1:])
    type_perm = torch.sort(node_cell_type, stable=True).indices
    type_rank = torch.empty_like(type_perm)
    type_rank[type_perm] = torch.arange(num_nodes, device=device)
    type_sizes = tuple(torch.bincount(node_cell_type, minlength=num_cell_types).tolist())
    return FusedGeneGraph(fused_index, key_all, attr_all, slot_ptr, perm,
                          gene, node_cell_type, type_perm, type_rank, type_sizes, sizes,
                          int(num_cell_types))


def fuse_from_hetero(data, num_cell_types: int, edge_dim: int = 0,
                     relations: Tuple[EdgeType, ...] = RELATIONS) -> FusedGeneGraph:
    """:func:`fuse_gene_graph` of a :class:`~torch_geometric.data.HeteroData` tissue."""
    node_cell_type = data[CELL].cell_type[data[GENE].cell]
    if node_cell_type.numel() and int(node_cell_type.max()) >= num_cell_types:
        raise ValueError(f"The graph has cell type {int(node_cell_type.max())}, but "
                         f"the layer was built for num_cell_types={num_cell_types}")
    edge_index_dict = {rel: data[rel].edge_index for rel in relations
                       if rel in data.edge_types}
    edge_attr_dict = {rel: data[rel].edge_attr for rel in relations
                      if rel in data.edge_types and 'edge_attr' in data[rel]}
    return fuse_gene_graph(edge_index_dict, node_cell_type, data[GENE].gene,
                           num_cell_types, edge_attr_dict, edge_dim, relations)
