import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter

from torch_staged.nn._fused import FusedGeneGraph, permute_rows
from torch_staged.nn.conv.staged_conv import GraphInput, STAGEDConv
from torch_staged.typing import RELATIONS, EdgeType


def _is_compiling() -> bool:
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # torch < 2.3


class STAGEDODEFunc(torch.nn.Module):
    r"""The STAGED vector field :math:`f(t, \mathbf{x})` for :mod:`torchdiffeq`.

    For every gene node :math:`v` (gene :math:`g`, cell type :math:`\tau`):

    .. math::
        \frac{d\mathbf{x}_v}{dt} = \mathrm{MLP}_{\tau}\left(\mathbf{x}_v \,\Vert\,
        \mathbf{m}^{\text{regulates}}_v \,\Vert\, \mathbf{m}^{\text{signals}}_v
        \,\Vert\, \mathbf{e}_g\right) - \mathrm{softplus}(\gamma_{\tau, g})\,
        \mathbf{x}_v

    where :math:`\mathbf{m}^r_v` are the messages of :class:`STAGEDConv` (one
    fused sparse pass over both relations), :math:`\mathbf{e}_g` the layer's gene
    embedding, :math:`\mathrm{MLP}_\tau` a two-layer perceptron with weights per
    cell type and :math:`\gamma_{\tau,g}` a learned decay rate. All cells of a
    type share parameters.

    The solver only passes :math:`(t, \mathbf{x})`, so the graph lives on the
    module: call :meth:`set_graph` once before integrating. Each call increments
    :attr:`nfe` (the number of function evaluations).

    Cells can be *clamped* (:meth:`set_clamp`): their state is replaced by a
    given trajectory (linearly interpolated in time) and their derivative is 0.
    This is how the halo cells of a spatial tile follow their observations.

    Args:
        num_genes (int): Size :math:`G` of the gene panel.
        num_cell_types (int): Number :math:`K` of cell types.
        channels (int, optional): State channels :math:`F` per gene node
            (1 + augmented latent channels). (default: :obj:`1`)
        hidden_channels (int, optional): Message size per head. (default: :obj:`16`)
        mlp_channels (int, optional): Hidden size of :math:`\mathrm{MLP}_\tau`.
            (default: :obj:`32`)
        heads (int, optional): Attention heads. (default: :obj:`1`)
        gene_dim (int, optional): Gene embedding size. (default: :obj:`8`)
        type_dim (int, optional): Cell-type embedding size of the layer's node
            input, so that signalling can depend on the sender's type.
            (default: :obj:`0`)
        edge_dim (int, optional): Edge attribute size. (default: :obj:`1`)
        attention (str, optional): ``'gat'``, ``'gatv2'`` or ``'mean'`` (uniform
            weights over each target's edges: the no-attention baseline).
            (default: :obj:`'gat'`)
        act (str, optional): Score non-linearity of the layer. The smooth default
            keeps the vector field differentiable everywhere, which the adjoint
            method and adaptive step control rely on (with GAT's kinked
            ``'leaky_relu'`` adjoint gradients were off by about 1% even at
            ``rtol=1e-10``). (default: :obj:`'smooth_leaky_relu'`)
        backend (str, optional): Segment backend of the layer.
            (default: :obj:`'native'`)
        relations (tuple, optional): The gene -> gene relations.
        normalize (str, optional): ``'softmax'`` or ``'gate'`` (signed tanh
            gates per edge, see :class:`STAGEDConv`); ``attention='mean'``
            always averages. (default: :obj:`'softmax'`)
        pair_dim (int, optional): Rank of the layer's gene-pair score term
            (see :class:`STAGEDConv`; ignored with ``attention='mean'``).
            (default: :obj:`0`)
        score_state (bool, optional): Whether the attention scores see the
            expression state (see :class:`STAGEDConv`). (default: :obj:`True`)
        value_channels (int, optional): Node-level value features of the layer
            (see :class:`STAGEDConv`). (default: :obj:`0`)

    Shapes:
        - **input:** time :math:`()`, state :math:`(N G, F)` or :math:`(N G F)`
        - **output:** :math:`d\mathbf{x}/dt` of the same shape as the state
    """

    def __init__(self, num_genes: int, num_cell_types: int, channels: int = 1,
                 hidden_channels: int = 16, mlp_channels: int = 32, heads: int = 1,
                 gene_dim: int = 8, type_dim: int = 0, edge_dim: int = 1,
                 attention: str = 'gat',
                 act: str = 'smooth_leaky_relu', backend: str = 'native',
                 relations: Tuple[EdgeType, ...] = RELATIONS, normalize: str = 'softmax',
                 pair_dim: int = 0, score_state: bool = True, value_channels: int = 0,
                 value_embedding: bool = True):
        super().__init__()
        if not isinstance(mlp_channels, int) or mlp_channels < 1:
            raise ValueError(f"'mlp_channels' must be a positive integer "
                             f"(got {mlp_channels!r})")
        self.num_genes = num_genes
        self.num_cell_types = num_cell_types
        self.channels = channels
        self.hidden_channels = hidden_channels
        self.mlp_channels = mlp_channels
        self.attention = attention
        conv_attention = 'gat' if attention == 'mean' else attention
        if attention == 'mean':  # frozen zero scores: static by construction
            score_state = False
        self.conv = STAGEDConv(channels, hidden_channels, num_genes, num_cell_types,
                               heads=heads, gene_dim=gene_dim, type_dim=type_dim,
                               edge_dim=edge_dim,
                               attention=conv_attention, act=act, backend=backend,
                               relations=relations,
                               normalize='softmax' if attention == 'mean' else normalize,
                               pair_dim=0 if attention == 'mean' else pair_dim,
                               score_state=score_state, value_channels=value_channels,
                               value_embedding=value_embedding)
        if attention == 'mean':
            # Uniform attention: freeze the score parameters at zero.
            for name in ('att_src', 'att_dst', 'att_edge'):
                param = getattr(self.conv, name)
                if param is not None:
                    param.requires_grad_(False)
        K = num_cell_types
        in_dim = channels + self.conv.out_dim + gene_dim + type_dim
        self.mlp_in_channels = in_dim
        self.weight1 = Parameter(torch.empty(K, in_dim, mlp_channels))
        self.bias1 = Parameter(torch.empty(K, mlp_channels))
        self.weight2 = Parameter(torch.empty(K, mlp_channels, channels))
        self.bias2 = Parameter(torch.empty(K, channels))
        self.decay = Parameter(torch.empty(K, num_genes))
        self.nfe = 0
        self._fused: Optional[FusedGeneGraph] = None
        self._inner: Optional[Tuple[Tensor, FusedGeneGraph]] = None  # type-major
        self._compiled = None  # the compiled field (see compile_field())
        self._clamp: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        #: Fold the layer's value matrices into the MLP's first layer
        #: (:meth:`STAGEDConv.fold_values`): the same field without the
        #: ``[N*G, R*H*C]`` messages; :obj:`False` computes the messages (the
        #: reference the folded path is tested against).
        self.fold_values = True
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters (small output weights, so that the
        initial dynamics are gentle and dominated by the decay).
        """
        self.conv.reset_parameters()
        if self.attention == 'mean':
            with torch.no_grad():
                for name in ('att_src', 'att_dst', 'att_edge'):
                    param = getattr(self.conv, name)
                    if param is not None:
                        param.zero_()
        bound1 = 1.0 / math.sqrt(self.mlp_in_channels)
        bound2 = 0.1 / math.sqrt(self.mlp_channels)
        with torch.no_grad():
            self.weight1.uniform_(-bound1, bound1)
            self.bias1.uniform_(-bound1, bound1)
            self.weight2.uniform_(-bound2, bound2)
            self.bias2.zero_()
            self.decay.fill_(math.log(math.expm1(0.5)))  # softplus(gamma) = 0.5
        self.nfe = 0

    # ----------------------------------------------------------------- graph
    def set_graph(self, graph: GraphInput) -> 'STAGEDODEFunc':
        r"""Fixes the graph for the next solves (fused and cached once).

        Internally the vector field works on the same graph with its gene nodes
        numbered type by type (:meth:`FusedGeneGraph.type_major`), so that the
        per-type weights act on slices; states are reordered on the way in and
        out (one gather of the state each way).
        """
        device = self.decay.device
        dtype = self.decay.dtype
        fused = self.conv.fuse_graph(graph, device=device, dtype=dtype)
        if self._inner is None or self._inner[0] is not fused.edge_index:
            self._inner = (fused.edge_index, fused.type_major())
        self._fused = fused
        self._clamp = None
        return self

    @property
    def graph(self) -> FusedGeneGraph:
        """The fused graph set by :meth:`set_graph`."""
        if self._fused is None:
            raise RuntimeError("No graph is set: call func.set_graph(data) before "
                               "integrating")
        return self._fused

    def set_clamp(self, mask: Optional[Tensor], t: Optional[Tensor] = None,
                  values: Optional[Tensor] = None) -> 'STAGEDODEFunc':
        r"""Clamps the gene nodes of :obj:`mask` ``[N*G]`` to the trajectory
        :obj:`values` ``[T, N*G, F]`` at times :obj:`t` ``[T]`` (linear
        interpolation, constant outside). :obj:`mask=None` removes the clamp.
        """
        if mask is None:
            self._clamp = None
            return self
        if values.dim() != 3 or values.size(0) != t.numel():
            raise ValueError(f"Clamp values must have shape [T, N*G, F] with T = "
                             f"{t.numel()} (got {list(values.shape)})")
        perm = self.graph.type_perm  # to the internal (type-major) numbering
        self._clamp = (mask.view(-1, 1).index_select(0, perm), t,
                       values.index_select(1, perm))
        return self

    def _clamp_values(self, t: Tensor) -> Tensor:
        _, times, values = self._clamp
        t = t.to(times.dtype).clamp(times[0], times[-1])
        k = torch.searchsorted(times, t.view(1), right=True).clamp(1, times.numel() - 1)
        k = k.squeeze(0)
        t0, t1 = times[k - 1], times[k]
        w = ((t - t0) / (t1 - t0)).to(values.dtype)
        return values[k - 1] * (1 - w) + values[k] * w

    # --------------------------------------------------------------- forward
    def mlp(self, z: Tensor, graph: Optional[FusedGeneGraph] = None) -> Tensor:
        r"""The per-cell-type MLP on ``z [N*G, in]`` (rows in the order of
        :obj:`graph`, by default the set graph's), one matmul per type.
        """
        def apply(t: int, rows: Tensor) -> Tensor:
            hidden = torch.tanh(rows @ self.weight1[t] + self.bias1[t])
            return hidden @ self.weight2[t] + self.bias2[t]
        return (self.graph if graph is None else graph).per_type(z, apply)

    def _mlp_parts(self, state: Tensor, messages: Tensor, emb: Optional[Tensor],
                   graph: FusedGeneGraph, folded: bool = False) -> Tensor:
        r""":meth:`mlp` of :math:`\mathbf{z} = \mathbf{x} \Vert \mathbf{m} \Vert
        \mathbf{e}` without building :math:`\mathbf{z}`: the first layer is a
        sum of its blocks, the embedding block once per node (not per state of
        a batch ``[N*G, B, .]``). With :obj:`folded`, :obj:`messages` are the
        layer's aggregates before its value matrices, and the message block
        :math:`\mathbf{m} \mathbf{W}_m` is computed as
        :math:`\mathbf{a} \mathbf{U}_\tau + \mathbf{b} \mathbf{W}_m`
        (:meth:`STAGEDConv.fold_values`).
        """
        F_in = state.size(-1)
        M = (self.weight1.size(1) - F_in - (0 if emb is None else emb.size(-1))
             if folded else messages.size(-1))
        batched = state.dim() == 3

        def apply(t: int, s: Tensor, m: Tensor, e: Optional[Tensor]) -> Tensor:
            w1, b1 = self.weight1[t], self.bias1[t]
            w_m = w1[F_in:F_in + M]
            if folded:
                w_m, bias = self.conv.fold_values(t, w_m)
                b1 = b1 if bias is None else b1 + bias
            if batched:
                const = b1 if e is None else torch.addmm(b1, e, w1[F_in + M:])
                pre = s @ w1[:F_in] + m @ w_m + const.unsqueeze(-2)
            else:  # one output, the other blocks accumulated into it in place
                pre = (torch.addmm(b1, s, w1[:F_in]) if e is None else
                       torch.addmm(b1, e, w1[F_in + M:]).addmm_(s, w1[:F_in]))
                pre = pre.addmm_(m, w_m)
            hidden = torch.tanh(pre)
            return hidden @ self.weight2[t] + self.bias2[t]
        return graph.per_type((state, messages, emb), apply)

    @property
    def inner_graph(self) -> FusedGeneGraph:
        """The set graph with its gene nodes numbered type by type, on which
        the vector field computes (see :meth:`set_graph`); per-edge tensors
        such as :obj:`source_shift` are in its edge order.
        """
        if self._fused is None:
            return self.graph  # raises: no graph is set
        return self._inner[1]

    def _to_inner(self, x: Tensor) -> Tensor:
        outer = self.graph
        return x if outer.grouped else permute_rows(x, outer.type_perm, outer.type_rank)

    def _to_outer(self, x: Tensor) -> Tensor:
        outer = self.graph
        return x if outer.grouped else permute_rows(x, outer.type_rank, outer.type_perm)

    def attention_weights(self, x: Tensor) -> Dict[EdgeType, Tuple[Tensor, Tensor]]:
        r"""The layer's attention coefficients at the state :obj:`x` ``[N*G, F]``
        (node order): ``{relation: (edge_index [2, E_r], alpha [E_r, H])}`` in
        each relation's own edge order (as :class:`STAGEDConv` returns them).
        """
        inner = self.inner_graph
        _, att = self.conv(self._to_inner(x.view(inner.num_nodes, -1)), inner,
                           return_attention_weights=True)
        edge_index = self.graph.relation_edge_index()
        return {rel: (edge_index[r], alpha)
                for r, (rel, (_, alpha)) in enumerate(att.items())}

    def forward(self, t: Tensor, x: Tensor, source_shift: Optional[Tensor] = None
                ) -> Tensor:
        r"""Returns :math:`d\mathbf{x}/dt` at time :obj:`t` for state :obj:`x`
        (see :class:`STAGEDConv` for :obj:`source_shift`). A 3-D state
        ``[N*G, B, F]`` is a batch of :math:`B` states of the same tissue,
        evaluated in one pass (static scores only, see :class:`STAGEDConv`).
        After :meth:`compile_field` the field itself runs compiled; the count of
        evaluations stays here, outside the compiled code.
        """
        if not _is_compiling():  # a count inside a compiled graph would be a guard
            self.nfe += 1
        if self._compiled is not None and source_shift is None:
            return self._compiled(t, x)
        return self.field(t, x, source_shift)

    def compile_field(self, **kwargs) -> "STAGEDODEFunc":
        r"""Compiles the vector field with :func:`torch.compile` (keyword
        arguments passed on), keeping the evaluation count outside the compiled
        code, so that the evaluations of a solve on one graph compile once
        (the count is not a guard). Returns :obj:`self`.
        """
        self._compiled = torch.compile(self.field, **kwargs)
        return self

    def field(self, t: Tensor, x: Tensor, source_shift: Optional[Tensor] = None
              ) -> Tensor:
        r"""The vector field of :meth:`forward`, without the evaluation count."""
        fused = self.inner_graph  # type-major numbering: per-type slices
        batched = x.dim() == 3
        if batched and self._clamp is not None:
            raise ValueError("A batch of states cannot have clamped cells: solve "
                             "those one by one")
        state = self._to_inner(x if batched else x.view(fused.num_nodes, self.channels))
        if self._clamp is not None:
            mask = self._clamp[0]
            state = torch.where(mask, self._clamp_values(t), state)
        messages = self.conv(state, fused, source_shift=source_shift,
                             apply_values=not self.fold_values)
        emb = self.conv.node_embedding(fused.gene, fused.node_type, state.dtype)
        decay = F.softplus(self.decay)[fused.node_type, fused.gene].unsqueeze(-1)
        dx = (self._mlp_parts(state, messages, emb, fused, folded=self.fold_values)
              - (decay.unsqueeze(1) if batched else decay) * state)
        if self._clamp is not None:
            dx = dx.masked_fill(self._clamp[0], 0.0)
        return self._to_outer(dx).view_as(x)

    def edge_jacobian(self, x: Tensor, t: Optional[Tensor] = None
                      ) -> Tuple[Tensor, ...]:
        r"""The derivative :math:`\partial \dot{x}_v / \partial x_u` through every
        gene -> gene edge :math:`u \to v`, for all edges in **one** backward pass.

        Each edge gets its own copy of the source state (a zero shift
        :math:`\delta_e`, see :class:`STAGEDConv`); since :math:`\delta_e` only
        reaches the edge's target, :math:`\partial \sum_v \dot{x}_v /
        \partial \delta_e = \partial \dot{x}_{v(e)} / \partial x_{u(e)}` along
        that edge. For :math:`u \neq v` (every edge from
        :func:`~torch_staged.data.build_tissue_graph`) this is the full Jacobian
        entry. Expression channel 0 to channel 0.

        Args:
            x (Tensor): The state ``[N*G, F]`` (or ``[N*G]``) at which to evaluate.
            t (Tensor, optional): The time (matters only with clamped cells).

        Returns:
            One ``[E_r]`` tensor per relation, in that relation's edge order.
        """
        fused = self.inner_graph  # the edge order of the shifts
        t = torch.zeros((), dtype=x.dtype, device=x.device) if t is None else t
        state = x.detach().reshape(fused.num_nodes, self.channels)
        shift = state.new_zeros(fused.num_edges, self.channels, requires_grad=True)
        with torch.enable_grad():
            dx = self.forward(t, state, source_shift=shift)
            (grad, ) = torch.autograd.grad(dx[:, 0].sum(), shift)
        return fused.unfuse(grad[:, 0])

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_genes={self.num_genes}, '
                f'num_cell_types={self.num_cell_types}, channels={self.channels}, '
                f'hidden_channels={self.hidden_channels}, '
                f'attention={self.attention!r}'
                + (f', normalize={self.conv.normalize!r})' if self.conv.normalize != 'softmax'
                   else ')'))
