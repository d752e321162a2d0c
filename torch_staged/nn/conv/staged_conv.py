import math
import warnings
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.data import HeteroData
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.inits import glorot, zeros

from torch_staged.nn._fused import (
    FusedGeneGraph,
    fuse_from_hetero,
    fuse_gene_graph,
    permute_rows,
)
from torch_staged.nn._segment import (
    CSRPlan,
    check_backend,
    csr_plan,
    segment_softmax,
    segment_sum,
    weighted_aggregate,
)
from torch_staged.nn._templates import EdgeTemplates, edge_templates, select_edges
from torch_staged.nn._typed import CUSTOM_OP as _TYPED_OP
from torch_staged.nn._typed import typed_linear, use_kernel
from torch_staged.typing import GENE, RELATIONS, EdgeType

GraphInput = Union[FusedGeneGraph, HeteroData, Dict[EdgeType, Tensor]]
#: A full gene-pair table above this many entries gets a warning (256 MiB in
#: float32, before the optimiser's state).
LARGE_PAIR_TABLE = 2 ** 26


def _warn_large_pair_table(entries: int) -> None:
    if entries > LARGE_PAIR_TABLE:
        warnings.warn(
            f"pair_dim='full' allocates a dense [relations * cell types, genes, genes, "
            f"heads] table of {entries:,} parameters ({entries * 4 / 2**30:.1f} GiB in "
            f"float32; Adam keeps two more of the same size), although only the prior's "
            f"gene pairs are used: for a large panel pass pair_dim=<rank> (e.g. 8)",
            stacklevel=3)
AttentionDict = Dict[EdgeType, Tuple[Tensor, Tensor]]

ATTENTION_TYPES = ('gat', 'gatv2')
NORMALIZATIONS = ('softmax', 'gate')
ACTIVATIONS = ('leaky_relu', 'smooth_leaky_relu')


class STAGEDConv(MessagePassing):
    r"""The fused gene-graph attention layer of STAGED, from the `"Spatio-Temporal
    Agent-Based Graph Evolution Dynamics" <https://arxiv.org/abs/2507.11660>`_
    paper.

    Every cell carries a copy of the gene panel; gene node :math:`v` of cell
    :math:`c(v)` with cell type :math:`\tau(v)` has the state
    :math:`\mathbf{x}_v \in \mathbb{R}^F` and the input
    :math:`\mathbf{h}_v = \mathbf{x}_v \,\Vert\, \mathbf{e}_{g(v)}` (with a
    learned gene embedding :math:`\mathbf{e}_g`). Both gene -> gene relations
    :math:`r \in \{\text{regulates}, \text{signals}\}` (intracellular GRN edges
    and intercellular ligand -> receptor edges) are computed in **one** pass
    over a fused edge list, with parameters per (relation, target cell type):

    .. math::
        \mathbf{m}_v^{r} = \sum_{u \in \mathcal{N}_r(v)} \alpha_{uv}
        \mathbf{V}_{r,\tau(v)} \mathbf{h}_u
        = \mathbf{V}_{r,\tau(v)} \sum_{u \in \mathcal{N}_r(v)} \alpha_{uv}
        \mathbf{h}_u

    with the attention softmax over the edges of relation :math:`r` entering
    :math:`v`

    .. math::
        \alpha_{uv} = \frac{\exp(s_{uv})}{\sum_{w \in \mathcal{N}_r(v)}
        \exp(s_{wv})}, \qquad
        s_{uv} = \mathrm{LeakyReLU}\left(\mathbf{a}_{r,\tau(v)}^{\top}\mathbf{h}_u
        + \mathbf{b}_{r,\tau(v)}^{\top}\mathbf{h}_v
        + \mathbf{c}_{r,\tau(v)}^{\top}\mathbf{e}_{uv}\right)

    per head (``attention='gat'``: a score split into a source and a target
    term, so each edge costs a few scalars per head), or

    .. math::
        s_{uv} = \mathbf{a}_{r,\tau(v)}^{\top} \mathrm{LeakyReLU}\left(
        \mathbf{W}^{s}_{r,\tau(v)}\mathbf{h}_u + \mathbf{W}^{t}_{r,\tau(v)}
        \mathbf{h}_v + \mathbf{W}^{e}_{r,\tau(v)}\mathbf{e}_{uv}\right)

    (``attention='gatv2'``, more expressive, with a hidden vector per edge).
    With ``normalize='gate'`` the softmax is replaced by a signed gate per
    edge, :math:`\alpha_{uv} = \tanh(s_{uv}) \in (-1, 1)`: regulators of one
    target can then act with opposite signs, an edge can switch off
    (:math:`\alpha = 0`) whatever the target's other edges do, and gate values
    compare across targets and receptors (no per-target normalisation).
    Gates start equal: the score vectors start at 0, so every gate starts at
    the same value (:meth:`_start_gates_equal`: 0.50 with the defaults of
    :class:`~torch_staged.models.STAGED`) and the data tell the edges apart;
    no edge keeps a random initial strength that the data do not correct.
    With :obj:`pair_dim` :math:`= d > 0` every score gains a gene-pair term,
    :math:`s_{uv} \mathrel{+}= \langle \mathbf{p}^{src}_{r,\tau(v),g(u)},
    \mathbf{p}^{dst}_{r,\tau(v),g(v)} \rangle` with learned factors in
    :math:`\mathbb{R}^d` per gene: a rank-:math:`d` table of gene -> gene
    biases, so that each target can rank (and, with gates, sign) the same
    regulators differently even with GAT's additive score. With
    ``pair_dim='full'`` the table is a free learned logit
    :math:`p_{r,\tau(v),g(u),g(v)}` per gene pair (initialised at 0; memory
    :math:`R K G^2 H`), so that every prior edge of every receiving type has a
    strength of its own.
    :math:`\mathbf{e}_{uv}` are edge attributes (the distance between the two
    cells for signalling edges, zeros for intracellular ones). The output is
    :math:`[\mathbf{m}^{\text{regulates}}_v \,\Vert\, \mathbf{m}^{\text{signals}}_v]`
    (heads concatenated or averaged) plus a bias. A slot (target, relation)
    without edges receives :math:`\mathbf{0}`.

    The fused structure (edges of both relations sorted by target slot, with
    their parameter group and attributes) is built once per graph and cached;
    pass a :class:`~torch_staged.nn.FusedGeneGraph` from :meth:`fuse_graph` to skip
    even the cache look-up (e.g. under :func:`torch.compile`).

    Args:
        in_channels (int): Size :math:`F` of each gene node's state.
        out_channels (int): Size :math:`C` of each message per head.
        num_genes (int): Size :math:`G` of the gene panel.
        num_cell_types (int): Number :math:`K` of cell types.
        heads (int, optional): Number of attention heads :math:`H`.
            (default: :obj:`1`)
        gene_dim (int, optional): Size of the gene embedding (0 disables it).
            (default: :obj:`8`)
        type_dim (int, optional): Size of a learned cell-type embedding
            :math:`\mathbf{c}_{\tau}` appended to :math:`\mathbf{h}_v` (0
            disables it). With it, scores and values can depend on the *sender's*
            cell type, not only on the receiver's. (default: :obj:`0`)
        edge_dim (int, optional): Size :math:`D_e` of the edge attributes (0
            ignores them). (default: :obj:`1`)
        concat (bool, optional): Concatenate heads (else average them).
            (default: :obj:`True`)
        negative_slope (float, optional): LeakyReLU slope. (default: :obj:`0.2`)
        act (str, optional): The score non-linearity: ``'leaky_relu'`` (as in GAT)
            or ``'smooth_leaky_relu'``, :math:`s x + (1 - s)\,\mathrm{softplus}(x)`,
            which has the same asymptotes but no kink. Use the smooth one inside
            ODEs integrated with adaptive solvers or the adjoint method, whose
            accuracy assumes a smooth vector field. (default: :obj:`'leaky_relu'`)
        dropout (float, optional): Dropout on the attention coefficients.
            (default: :obj:`0.0`)
        bias (bool, optional): Add a learnable bias. (default: :obj:`True`)
        attention (str, optional): ``'gat'`` or ``'gatv2'``. (default: :obj:`'gat'`)
        normalize (str, optional): ``'softmax'`` (attention coefficients sum to
            1 over the edges of a relation entering a target) or ``'gate'``
            (signed :math:`\tanh` gates, no normalisation).
            (default: :obj:`'softmax'`)
        pair_dim (int or str, optional): Rank :math:`d` of the gene-pair score
            term (0 disables it), or ``'full'`` for a free logit per gene pair.
            (default: :obj:`0`)
        backend (str, optional): ``'native'`` (pure PyTorch) or
            ``'torch_scatter'`` (CSR segment kernels, needs torch-scatter).
            (default: :obj:`'native'`)
        relations (tuple, optional): The gene -> gene edge types, in output order.
            (default: :obj:`(('gene', 'regulates', 'gene'), ('gene', 'signals',
            'gene'))`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          gene-node states :math:`(N G, F)` (or a dict with key ``'gene'``),
          a graph: :class:`~torch_geometric.data.HeteroData` tissue,
          :class:`~torch_staged.nn.FusedGeneGraph`, or an edge index dict
          :math:`\{r: (2, E_r)\}` with :obj:`cell_type` :math:`(N)`
        - **output:** gene-node messages :math:`(N G, R H C)` (or :math:`(N G,
          R C)` when :obj:`concat=False`); with
          :obj:`return_attention_weights=True` also a dict
          :math:`\{r: ((2, E_r), (E_r, H))\}` of each relation's edge index and
          attention coefficients, in that relation's own edge order.

    Example:
        A :class:`STAGEDConv` composed with PyG layers in a user model, trained
        for a few steps on a node-regression task:

        >>> import numpy as np, torch
        >>> from torch_geometric.nn import Linear
        >>> from torch_staged.data import build_tissue_graph
        >>> from torch_staged.nn import STAGEDConv
        >>> rng = np.random.default_rng(0)
        >>> data = build_tissue_graph(rng.uniform(0, 5, (40, 2)), rng.integers(0, 2, 40),
        ...                           ['L', 'R', 'T'], lr_pairs=[('L', 'R')], k=4,
        ...                           x=rng.normal(size=(40, 3)))
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = STAGEDConv(1, 8, num_genes=3, num_cell_types=2)
        ...         self.lin = Linear(-1, 1)  # a lazy PyG layer
        ...     def forward(self, x, graph):
        ...         return self.lin(torch.relu(self.conv(x, graph)))
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = Net()
        >>> x, y = data['gene'].x, data['gene'].x.roll(1, 0)
        >>> _ = model(x, data)  # initialises the lazy layer
        >>> opt = torch.optim.Adam(model.parameters(), lr=0.01)
        >>> losses = []
        >>> for _ in range(20):
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x, data), y)
        ...     loss.backward()
        ...     opt.step()
        ...     losses.append(loss.item())
        >>> losses[-1] < losses[0]
        True
        >>> model.conv
        STAGEDConv(1, 8, num_genes=3, num_cell_types=2, heads=1)
    """
    _fused_cache: Optional[Tuple[tuple, FusedGeneGraph]]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_genes: int,
        num_cell_types: int,
        heads: int = 1,
        gene_dim: int = 8,
        type_dim: int = 0,
        edge_dim: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        act: str = 'leaky_relu',
        dropout: float = 0.0,
        bias: bool = True,
        attention: str = 'gat',
        backend: str = 'native',
        relations: Tuple[EdgeType, ...] = RELATIONS,
        normalize: str = 'softmax',
        pair_dim: Union[int, str] = 0,
        score_state: bool = True,
        value_channels: int = 0,
        value_embedding: bool = True,
        **kwargs,
    ):
        kwargs.setdefault('aggr', 'add')
        super().__init__(node_dim=0, **kwargs)
        for name, value, low in (('in_channels', in_channels, 1),
                                 ('out_channels', out_channels, 1),
                                 ('num_genes', num_genes, 1),
                                 ('num_cell_types', num_cell_types, 1),
                                 ('heads', heads, 1), ('gene_dim', gene_dim, 0),
                                 ('type_dim', type_dim, 0),
                                 ('edge_dim', edge_dim, 0),
                                 ('pair_dim', 0 if pair_dim == 'full' else pair_dim, 0),
                                 ('value_channels', value_channels, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"'{name}' must be an integer >= {low} "
                                 f"(got {value!r})")
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"'attention' must be one of {ATTENTION_TYPES} "
                             f"(got '{attention}')")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"'normalize' must be one of {NORMALIZATIONS} "
                             f"(got '{normalize}')")
        if act not in ACTIVATIONS:
            raise ValueError(f"'act' must be one of {ACTIVATIONS} (got '{act}')")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'dropout' must lie in [0, 1) (got {dropout})")
        if len(relations) == 0:
            raise ValueError("'relations' must name at least one edge type")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_genes = num_genes
        self.num_cell_types = num_cell_types
        self.heads = heads
        self.gene_dim = gene_dim
        self.type_dim = type_dim
        self.edge_dim = edge_dim
        self.concat = concat
        self.negative_slope = negative_slope
        self.act = act
        self.dropout = dropout
        self.attention = attention
        self.normalize = normalize
        self.pair_dim = pair_dim
        self.score_state = bool(score_state)
        self.value_channels = value_channels
        self.value_embedding = bool(value_embedding)
        self.backend = check_backend(backend)
        self.relations = tuple(tuple(r) for r in relations)

        R, K, H, C = len(self.relations), num_cell_types, heads, out_channels
        D = in_channels + gene_dim + type_dim
        D_score = D if self.score_state else D - in_channels  # rows of the scores
        self.gene_emb = (torch.nn.Embedding(num_genes, gene_dim)
                         if gene_dim > 0 else None)
        self.type_emb = (torch.nn.Embedding(num_cell_types, type_dim)
                         if type_dim > 0 else None)
        if attention == 'gat':
            self.att_src = Parameter(torch.empty(D_score, R * K * H))
            self.att_dst = Parameter(torch.empty(D_score, R * K * H))
            self.att_edge = (Parameter(torch.empty(R * K, edge_dim, H))
                             if edge_dim > 0 else None)
        else:
            self.lin_src = Parameter(torch.empty(D_score, R * K * H * C))
            self.lin_dst = Parameter(torch.empty(D_score, R * K * H * C))
            self.lin_edge = (Parameter(torch.empty(R * K, edge_dim, H * C))
                             if edge_dim > 0 else None)
            self.att = Parameter(torch.empty(R * K, H, C))
        # gene-pair score term: source and target gene factors per group
        low_rank = pair_dim != 'full' and pair_dim > 0
        self.pair_src = (Parameter(torch.empty(R * K, num_genes, H, pair_dim))
                         if low_rank else None)
        self.pair_dst = (Parameter(torch.empty(R * K, num_genes, H, pair_dim))
                         if low_rank else None)
        if pair_dim == 'full':
            _warn_large_pair_table(R * K * num_genes * num_genes * H)
        self.pair_table = (Parameter(torch.empty(R * K, num_genes, num_genes, H))
                           if pair_dim == 'full' else None)
        # node-level value features psi(h) = tanh(h W + b), before the edge pass
        self.lin_value = (torch.nn.Linear(D, value_channels)
                          if value_channels > 0 else None)
        D_value = D if self.value_embedding else in_channels
        self.value = Parameter(torch.empty(R, K, H, D_value + value_channels, C))
        out_dim = R * H * C if concat else R * C
        self.bias = Parameter(torch.empty(out_dim)) if bias else None
        self._fused_cache = None
        self._pair_rows_cache: Optional[Tuple[Tensor, Tuple[Tensor, Tensor]]] = None
        self._embedding_rows_cache: Optional[Tuple[Tensor, Tensor]] = None
        self._table_index_cache: Optional[Tuple[Tensor, Tensor]] = None
        self._pair_table_rows_cache: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self._csr_cache: Optional[Tuple[Tensor, CSRPlan]] = None
        self._batch_major_cache: Optional[Tuple[Tensor, int, Tensor, Tensor]] = None
        self._template_cache: Optional[Tuple[Tensor, Optional[EdgeTemplates],
                                             Optional[Tensor]]] = None
        #: With static scores, compute the coefficients once per edge template
        #: (see :meth:`edge_templates`); :obj:`False` computes them edge by edge
        #: (the reference the templates are tested against).
        self.use_edge_templates = True
        self.reset_parameters()

    # ------------------------------------------------------------------ setup
    @property
    def num_relations(self) -> int:
        """Number :math:`R` of gene -> gene relations."""
        return len(self.relations)

    @property
    def node_dim_in(self) -> int:
        r"""Size :math:`D = F + \text{gene\_dim} + \text{type\_dim}` of
        :math:`\mathbf{h}_v`.
        """
        return self.in_channels + self.gene_dim + self.type_dim

    @property
    def message_dim(self) -> int:
        r"""Size of the aggregated source features (see
        :meth:`message_features`).
        """
        base = self.node_dim_in if self.value_embedding else self.in_channels
        return base + self.value_channels

    @property
    def out_dim(self) -> int:
        """Size of the output per gene node."""
        return self.bias.numel() if self.bias is not None else (
            self.num_relations * self.out_channels *
            (self.heads if self.concat else 1))

    def reset_parameters(self):
        r"""Resets all learnable parameters."""
        super().reset_parameters()
        if self.gene_emb is not None:
            torch.nn.init.normal_(self.gene_emb.weight, std=1.0 / math.sqrt(
                max(self.gene_dim, 1)))
        if self.type_emb is not None:
            torch.nn.init.normal_(self.type_emb.weight, std=1.0 / math.sqrt(self.type_dim))
        for name in ('att_src', 'att_dst', 'att_edge', 'lin_src', 'lin_dst',
                     'lin_edge', 'att'):
            param = getattr(self, name, None)
            if param is not None:
                glorot(param)
        if self.lin_value is not None:
            self.lin_value.reset_parameters()
        # V_{r, tau, h}: [D + P, C] per (relation, type, head)
        bound = math.sqrt(6.0 / (self.message_dim + self.out_channels))
        with torch.no_grad():
            self.value.uniform_(-bound, bound)
        zeros(self.bias)
        if self.pair_src is not None:  # small: the pair term starts near 0
            std = 0.5 / math.sqrt(self.pair_dim)
            torch.nn.init.normal_(self.pair_src, std=std)
            torch.nn.init.normal_(self.pair_dst, std=std)
        if self.pair_table is not None:
            zeros(self.pair_table)
        if self.normalize == 'gate':
            self._start_gates_equal()
        self._fused_cache = None

    def _start_gates_equal(self):
        r"""Zeroes the score vectors that act on the node and edge terms (GAT's
        :math:`\mathbf{a}, \mathbf{b}, \mathbf{c}`, GATv2's outer
        :math:`\mathbf{a}`), so that, with the full pair table (which starts
        at 0) or no pair term, every gate starts at the same value
        :math:`\tanh(\mathrm{act}(0))`: 0.50 with GAT's smooth score
        non-linearity (applied to the summed score, :math:`\mathrm{act}(0) =
        (1 - s) \ln 2`), 0 with ``'leaky_relu'`` or GATv2. No gene pair starts
        with a random head start: where the data leave a direction undetermined
        a parameter stays near its start, and a random start would stay as a
        random strength. Applied after the random draws, so the other
        parameters are those of the same random start.
        """
        for name in ('att_src', 'att_dst', 'att_edge', 'att'):
            param = getattr(self, name, None)
            if param is not None:
                zeros(param)

    def fuse_graph(self, graph: GraphInput, cell_type: Optional[Tensor] = None,
             edge_attr_dict: Optional[Dict[EdgeType, Tensor]] = None,
             device: Optional[torch.device] = None,
             dtype: Optional[torch.dtype] = None) -> FusedGeneGraph:
        r"""Returns the fused, sorted edge structure of :obj:`graph` (cached: the
        same graph is fused only once).

        Args:
            graph: A :class:`~torch_geometric.data.HeteroData` tissue (or batch),
                an edge index dict, or an already fused graph (returned as is).
            cell_type (Tensor, optional): ``[N]`` cell types, needed with an edge
                index dict (gene nodes are then ``cell * G + gene``).
            edge_attr_dict (dict, optional): Edge attributes for an edge index dict.
            device (torch.device, optional): Where to place the structure.
            dtype (torch.dtype, optional): The dtype of its edge attributes.
        """
        if isinstance(graph, FusedGeneGraph):
            if device is not None or dtype is not None:
                return graph.to(device, dtype)
            return graph
        if isinstance(graph, HeteroData):
            tensors = [graph[rel].edge_index for rel in self.relations
                       if rel in graph.edge_types]
            tensors.extend(graph[rel].edge_attr for rel in self.relations
                           if rel in graph.edge_types and 'edge_attr' in graph[rel])
            tensors.append(graph['cell'].cell_type)
        elif isinstance(graph, dict):
            if cell_type is None:
                raise ValueError("An edge index dict needs 'cell_type' (the [N] cell "
                                 "type of every cell) to pick per-type parameters")
            tensors = [graph[rel] for rel in self.relations if rel in graph]
            tensors.append(cell_type)
            if edge_attr_dict:
                tensors.extend(edge_attr_dict.values())
        else:
            raise TypeError(f"'graph' must be a HeteroData, a FusedGeneGraph or an "
                            f"edge index dict (got {type(graph).__name__})")
        key = (id(graph), ) + tuple((t.data_ptr(), t.numel(), t._version)
                                    for t in tensors)
        if self._fused_cache is not None and self._fused_cache[0] == key:
            fused = self._fused_cache[1]
        elif isinstance(graph, HeteroData):
            fused = fuse_from_hetero(graph, self.num_cell_types, self.edge_dim,
                                     self.relations)
        else:
            num_cells = cell_type.numel()
            node = torch.arange(num_cells * self.num_genes, device=cell_type.device)
            node_type = cell_type.long()[node // self.num_genes]
            if node_type.numel() and int(node_type.max()) >= self.num_cell_types:
                raise ValueError(f"'cell_type' has type {int(node_type.max())}, but "
                                 f"the layer has num_cell_types={self.num_cell_types}")
            fused = fuse_gene_graph(graph, node_type, node % self.num_genes,
                                    self.num_cell_types, edge_attr_dict,
                                    self.edge_dim, self.relations)
        if ((device is not None and fused.edge_index.device != torch.device(device))
                or (dtype is not None and fused.edge_attr.dtype != dtype)):
            fused = fused.to(device, dtype)
        # One entry: the structure as last used (device and dtype included).
        self._fused_cache = (key, fused)
        return fused

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        x: Union[Tensor, Dict[str, Tensor]],
        graph: GraphInput,
        *,
        cell_type: Optional[Tensor] = None,
        edge_attr_dict: Optional[Dict[EdgeType, Tensor]] = None,
        return_attention_weights: Optional[bool] = None,
        source_shift: Optional[Tensor] = None,
        apply_values: bool = True,
    ) -> Union[Tensor, Tuple[Tensor, AttentionDict]]:
        r"""Runs the layer.

        Args:
            x (Tensor or dict): Gene-node states ``[N*G, F]`` (or ``{'gene': x}``),
                or a batch of :math:`B` states of the same tissue ``[N*G, B, F]``
                (with :obj:`score_state=False` only: the attention coefficients
                are then computed once and shared by the batch, and the output
                is ``[N*G, B, out_dim]``).
            graph: The tissue graph (see :meth:`fuse_graph`).
            cell_type (Tensor, optional): ``[N]`` cell types (edge index dict only).
            edge_attr_dict (dict, optional): Edge attributes (edge index dict only).
            return_attention_weights (bool, optional): Also return the attention
                coefficients of every edge, per relation. (default: :obj:`None`)
            source_shift (Tensor, optional): ``[E, F]`` per-edge shifts of the
                source state, in the fused edge order: edge :math:`e = (u \to v)`
                sees :math:`\mathbf{x}_u + \delta_e` instead of :math:`\mathbf{x}_u`.
                Its gradient at 0 is the derivative of the output of :math:`v`
                through that edge, for every edge in one backward pass (see
                :meth:`~torch_staged.nn.STAGEDODEFunc.edge_jacobian`).
            apply_values (bool, optional): With :obj:`False`, return the
                aggregated source features :math:`\sum_u \alpha_{uv}^{r,h}
                \mathbf{h}_u` of every node, relation and head, ``[N*G, R*H*D]``
                (``[N*G, B, R*H*D]`` for a batch), before the value matrices
                :math:`\mathbf{V}_{r,\tau}` and the bias (see
                :meth:`fold_values`). (default: :obj:`True`)
        """
        if isinstance(x, dict):
            x = x[GENE]
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        fused = self.fuse_graph(graph, cell_type, edge_attr_dict, device=x.device,
                          dtype=x.dtype)
        self._check_state(x, fused, source_shift)
        batch = x.size(1) if x.dim() == 3 else 0
        templates = self.edge_templates(fused)  # static scores only
        # with templates, the static scores and the silent-source value features
        # depend on the embeddings per (gene, cell type): G*K rows, not N*G
        by_table = templates is not None
        table = self.embedding_table(x.dtype) if by_table else None
        per_node = (not by_table or self.score_state or self.value_embedding
                    or source_shift is not None)
        emb = (self.node_embedding(fused.gene, fused.node_type, x.dtype)  # [NG, D - F]
               if per_node else None)
        # h = x || emb is materialised only where it is used as a whole (the
        # static scores see emb only)
        h = (x if emb is None else torch.cat([x, emb], dim=-1)
             if self.score_state or source_shift is not None else None)
        h_msg = self.message_features(
            x, emb, None if per_node else (table[0], self.embedding_rows(fused)))
        num_slots = fused.num_nodes * self.num_relations
        h_score = (table[0] if by_table else h if self.score_state
                   else self._embedding_or_empty(x, emb))
        alpha = self.edge_updater(fused.edge_index, h=h_score, key=fused.key,
                                  edge_attr=fused.edge_attr, slot_ptr=fused.slot_ptr,
                                  node_type=table[1] if by_table else fused.node_type,
                                  source_shift=source_shift,
                                  pair_rows=None if not self.pair_dim
                                  else self.pair_rows(fused),
                                  templates=templates, by_table=by_table,
                                  size=(fused.num_nodes, num_slots))
        typed = apply_values and self.typed_values(fused, x, batch)
        out = self.propagate(fused.edge_index, h=h_msg.flatten(1), alpha=alpha,
                             slot_ptr=fused.slot_ptr, fused=fused,
                             source_shift=self._message_shift(source_shift, h,
                                                              fused.edge_index[0]),
                             batch=max(batch, 1), apply_values=apply_values,
                             typed=typed,
                             size=(fused.num_nodes, num_slots))  # [NG, B, R, H, C]
        if not apply_values:  # [NG, R, H, B, D] -> [NG, B, R*H*D]
            out = self._batch_major(out, fused)
        else:
            out = out.flatten(2, 4) if self.concat else out.mean(dim=3).flatten(2, 3)
        out = out if batch else out.squeeze(1)
        if self.bias is not None and apply_values and not typed:  # typed: added there
            out = out + self.bias

        if return_attention_weights:
            edge_index = fused.relation_edge_index()
            alphas = fused.unfuse(alpha)
            return out, {rel: (edge_index[r], alphas[r])
                         for r, rel in enumerate(self.relations)}
        return out

    def _check_state(self, x: Tensor, fused: FusedGeneGraph,
                     source_shift: Optional[Tensor]) -> None:
        """Raises a clear error for a state or shift of the wrong shape."""
        if (x.dim() not in (2, 3) or x.size(0) != fused.num_nodes
                or x.size(-1) != self.in_channels):
            raise ValueError(f"'x' must have shape [num_gene_nodes, in_channels] = "
                             f"[{fused.num_nodes}, {self.in_channels}] (got "
                             f"{list(x.shape)}); a batch of states is [num_gene_nodes, "
                             f"batch, in_channels]")
        if x.dim() == 3 and (self.score_state or source_shift is not None):
            raise ValueError("A batch of states [num_gene_nodes, batch, in_channels] "
                             "needs static scores (score_state=False) and no "
                             "'source_shift'; for state-dependent scores, repeat the "
                             "graph instead (FusedGeneGraph.repeat)")
        if source_shift is not None and source_shift.shape != (fused.num_edges,
                                                               self.in_channels):
            raise ValueError(f"'source_shift' must have shape [num_edges, in_channels] "
                             f"= [{fused.num_edges}, {self.in_channels}] (got "
                             f"{list(source_shift.shape)})")

    def node_features(self, x: Tensor, gene: Tensor,
                      node_type: Optional[Tensor] = None) -> Tensor:
        r"""The layer's node input :math:`\mathbf{h}_v = \mathbf{x}_v \Vert
        \mathbf{e}_{g(v)} \Vert \mathbf{c}_{\tau(v)}`, shape ``[N*G, D]`` (or
        ``[N*G, B, D]`` for a batch of states ``[N*G, B, F]``).
        """
        emb = self.node_embedding(gene, node_type, x.dtype)
        if emb is None:
            return x
        if x.dim() == 3:
            emb = emb.unsqueeze(1).expand(-1, x.size(1), -1)
        return torch.cat([x, emb], dim=-1)

    def message_features(self, x: Tensor, emb: Optional[Tensor],
                         table: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        r"""The aggregated source features, ``[N*G, message_dim]`` (or ``[N*G,
        B, message_dim]``), from the states :obj:`x` and the embeddings
        :obj:`emb` ``[N*G, D - F]`` (:meth:`node_embedding`), so that
        :math:`\mathbf{h}_u = \mathbf{x}_u \Vert \mathbf{e}_u`:
        :math:`\mathbf{h}_u \Vert \boldsymbol{\psi}(\mathbf{h}_u)` with the
        node-level value features :math:`\boldsymbol{\psi}(\mathbf{h}) =
        \tanh(\mathbf{W}_\psi \mathbf{h} + \mathbf{b}_\psi) \in \mathbb{R}^P`
        (:obj:`value_channels` :math:`= P`, none when 0). With
        :obj:`value_embedding=False` the embeddings are left out and the value
        features are centred at a silent source,
        :math:`\mathbf{x}_u \Vert \boldsymbol{\psi}(\mathbf{h}_u) -
        \boldsymbol{\psi}(\mathbf{0} \Vert \mathbf{e}_{g(u)})`: a message is
        then 0 when its sources are not expressed, so an edge cannot act as a
        constant bias of its target. With :obj:`table` (the embeddings per
        (gene, cell type) and each node's row, :meth:`embedding_table` and
        :meth:`embedding_rows`) in place of :obj:`emb`, the silent-source terms
        are computed per row of the table and gathered.
        """
        F_in, batched = self.in_channels, x.dim() == 3
        parts = [x]
        if self.value_embedding and emb is not None:
            parts.append(emb.unsqueeze(1).expand(-1, x.size(1), -1) if batched else emb)
        if self.lin_value is not None:
            # W h + b = W_x x + (W_e e + b): the embedding part once per node
            weight, bias = self.lin_value.weight, self.lin_value.bias
            if table is not None:  # per (gene, cell type), then gathered
                rows_silent = torch.addmm(bias, table[0], weight[:, F_in:].t())
                silent = rows_silent.index_select(0, table[1])
            else:
                silent = bias if emb is None else torch.addmm(bias, emb,
                                                              weight[:, F_in:].t())
                silent = silent.expand(x.size(0), -1)
            pre = x @ weight[:, :F_in].t() + (silent.unsqueeze(1) if batched else silent)
            psi = torch.tanh(pre)
            if not self.value_embedding:
                silent = (torch.tanh(rows_silent).index_select(0, table[1])
                          if table is not None else torch.tanh(silent))
                psi = psi - (silent.unsqueeze(1) if batched else silent)
            parts.append(psi)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    @staticmethod
    def _embedding_or_empty(x: Tensor, emb: Optional[Tensor]) -> Tensor:
        return x.new_zeros(x.size(0), 0) if emb is None else emb

    def _message_shift(self, source_shift: Optional[Tensor], h: Tensor,
                       src: Tensor) -> Optional[Tensor]:
        r"""The first-order change ``[E, D + P]`` of each edge's source features
        for the per-edge state shifts :math:`\delta_e` (exact for the gradient
        at :math:`\delta = 0`): :math:`\delta_e` on the state channels, 0 on
        the embeddings and :math:`(1 - \psi_u^2) \odot \mathbf{W}_\psi^{x}
        \delta_e` on the value features.
        """
        if source_shift is None:
            return None
        F_in = self.in_channels
        parts = [source_shift]
        if self.value_embedding:
            parts.append(source_shift.new_zeros(source_shift.size(0),
                                                self.node_dim_in - F_in))
        if self.lin_value is not None:
            # d tanh(pre) / d pre = 1 - tanh(pre)^2 at the unshifted source
            psi = torch.tanh(self.lin_value(h)).index_select(0, src)
            w_x = self.lin_value.weight[:, :F_in]  # [P, F]
            parts.append((1.0 - psi * psi) * (source_shift @ w_x.t()))
        return torch.cat(parts, dim=-1)

    def node_embedding(self, gene: Tensor, node_type: Optional[Tensor] = None,
                       dtype: Optional[torch.dtype] = None) -> Optional[Tensor]:
        r"""The embedding part :math:`\mathbf{e}_{g(v)} \Vert \mathbf{c}_{\tau(v)}`
        of :math:`\mathbf{h}_v`, shape ``[N*G, gene_dim + type_dim]`` (:obj:`None`
        without embeddings).
        """
        parts = []
        if self.gene_emb is not None:
            parts.append(self.gene_emb.weight.index_select(0, gene))
        if self.type_emb is not None:
            if node_type is None:
                raise ValueError("'node_type' is needed with a cell-type embedding")
            parts.append(self.type_emb.weight.index_select(0, node_type))
        if dtype is not None:
            parts = [p.to(dtype) for p in parts]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def score_activation(self, value: Tensor) -> Tensor:
        r"""The non-linearity of the attention score (see :obj:`act`)."""
        if self.act == 'leaky_relu':
            return F.leaky_relu(value, self.negative_slope)
        slope = self.negative_slope
        return slope * value + (1.0 - slope) * F.softplus(value)

    def edge_update(self, h: Tensor, key: Tensor, edge_attr: Tensor,
                    edge_index_j: Tensor, index: Tensor, slot_ptr: Tensor,
                    node_type: Tensor, source_shift: Optional[Tensor],
                    pair_rows: Optional[Tuple[Tensor, Tensor]],
                    templates: Optional[EdgeTemplates], dim_size: int,
                    by_table: bool = False) -> Tensor:
        r"""Attention coefficients :math:`\alpha` ``[E, H]`` of the fused edges
        (with :obj:`templates`: computed for one edge per template, then
        gathered; with :obj:`by_table`, :obj:`h` and :obj:`node_type` are the
        rows of :meth:`embedding_table` rather than of the gene nodes).
        """
        R, K, H, C = (self.num_relations, self.num_cell_types, self.heads,
                      self.out_channels)
        num_nodes = h.size(0)
        inverse, full_index = None, index
        if templates is not None:  # static scores: one edge per template
            inverse, key, edge_attr = templates.inverse, templates.key, templates.edge_attr
            edge_index_j, index = templates.src, templates.slot
            if by_table:  # h and node_type are per (gene, cell type)
                edge_index_j, index = templates.src_row, templates.slot_row
            pair_rows = templates.pair_rows
        src_key = edge_index_j * (R * K) + key  # row of (source, group)
        if not self.score_state:  # h holds the embeddings only
            source_shift = None
        if self.attention == 'gat':
            # Node terms for every (relation, type) group, then one scalar per
            # edge and head is gathered (DESIGN section 3).
            s_src = (h @ self.att_src).view(num_nodes * R * K, H)
            s_dst = (h @ self.att_dst).view(num_nodes, R, K, H)
            s_dst = s_dst.gather(2, node_type.view(-1, 1, 1, 1).expand(
                -1, R, 1, H)).view(num_nodes * R, H)  # target's own type
            logits = s_src.index_select(0, src_key) + s_dst.index_select(0, index)
            if source_shift is not None:
                a_x = self.att_src[:self.in_channels].view(-1, R * K, H).transpose(0, 1)
                logits = logits + torch.einsum('ef,efh->eh', source_shift,
                                               a_x.index_select(0, key))
            if self.att_edge is not None:
                w_edge = self.att_edge.index_select(0, key)  # [E, D_e, H]
                logits = logits + (edge_attr.unsqueeze(-1) * w_edge).sum(1)
            logits = self.score_activation(logits)
        else:
            p_src = (h @ self.lin_src).view(num_nodes * R * K, H * C)
            p_dst = (h @ self.lin_dst).view(num_nodes, R, K, H * C)
            p_dst = p_dst.gather(2, node_type.view(-1, 1, 1, 1).expand(
                -1, R, 1, H * C)).view(num_nodes * R, H * C)
            hidden = p_src.index_select(0, src_key) + p_dst.index_select(0, index)
            if source_shift is not None:
                w_x = self.lin_src[:self.in_channels].view(-1, R * K, H * C).transpose(0, 1)
                hidden = hidden + torch.einsum('ef,efc->ec', source_shift,
                                               w_x.index_select(0, key))
            if self.lin_edge is not None:
                w_edge = self.lin_edge.index_select(0, key)  # [E, D_e, H*C]
                hidden = hidden + (edge_attr.unsqueeze(-1) * w_edge).sum(1)
            hidden = self.score_activation(hidden).view(-1, H, C)
            logits = (hidden * self.att.index_select(0, key)).sum(-1)
        if pair_rows is not None:
            logits = logits + self.pair_score(*pair_rows)
        if self.normalize == 'gate':
            alpha = torch.tanh(logits)
            alpha = alpha if inverse is None else alpha.index_select(0, inverse)
        else:
            if inverse is not None:
                logits, index = logits.index_select(0, inverse), full_index
            alpha = segment_softmax(logits, index, slot_ptr, dim_size, self.backend)
        return F.dropout(alpha, p=self.dropout, training=self.training)

    def edge_templates(self, fused: FusedGeneGraph) -> Optional[EdgeTemplates]:
        r"""With static scores (:obj:`score_state=False`), the edges grouped by
        what their score depends on, :math:`(k, \tau(u), g(u), g(v))` and
        their attributes (see :mod:`torch_staged.nn._templates`); built once
        per graph (cached). :obj:`None` with state-dependent scores, with
        :attr:`use_edge_templates` off, or where templates would not cut the
        edges at least in half.
        """
        if self.score_state or not self.use_edge_templates:
            return None
        cached = self._template_cache
        if (cached is not None and cached[0] is fused.edge_index
                and cached[2] is fused.edge_attr):
            return cached[1]
        dst = torch.div(fused.slot, self.num_relations, rounding_mode='floor')
        templates = edge_templates(fused.src, fused.key, fused.edge_attr, fused.gene,
                                   fused.node_type, dst,
                                   self.num_relations * self.num_cell_types,
                                   self.num_cell_types, self.num_genes)
        if templates is not None:  # the representatives' inputs, fixed for the graph
            src, slot, key, edge_attr = select_edges(
                templates.rep, fused.src, fused.slot, fused.key, fused.edge_attr)
            pair_rows = (None if not self.pair_dim
                         else select_edges(templates.rep, *self.pair_rows(fused)))
            R, row = self.num_relations, self.embedding_rows(fused)
            slot_row = (row.index_select(0, torch.div(slot, R, rounding_mode='floor')) * R
                        + slot % R)
            templates = templates._replace(src=src, slot=slot, key=key,
                                           edge_attr=edge_attr, pair_rows=pair_rows,
                                           src_row=row.index_select(0, src),
                                           slot_row=slot_row)
        self._template_cache = (fused.edge_index, templates, fused.edge_attr)
        return templates

    def embedding_rows(self, fused: FusedGeneGraph) -> Tensor:
        r"""``[N*G]``: the row :math:`g(v) K + \tau(v)` of every gene node in
        the table of embeddings per (gene, cell type) (:meth:`embedding_table`);
        cached per graph.
        """
        cached = self._embedding_rows_cache
        if cached is not None and cached[0] is fused.edge_index:
            return cached[1]
        rows = fused.gene * self.num_cell_types + fused.node_type
        self._embedding_rows_cache = (fused.edge_index, rows)
        return rows

    def embedding_table(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        r"""The embedding part of :math:`\mathbf{h}` for every (gene, cell type),
        ``[G*K, D - F]`` (no columns without embeddings), and each row's cell
        type ``[G*K]``: what the static scores and the silent-source value
        features depend on, computed on :math:`G K` rows instead of :math:`N G`.
        """
        G, K = self.num_genes, self.num_cell_types
        device = self.value.device
        cached = self._table_index_cache  # (gene, type) of every row, fixed
        if cached is None or cached[0].device != device:
            cached = self._table_index_cache = (
                torch.arange(G, device=device).repeat_interleave(K),
                torch.arange(K, device=device).repeat(G))
        gene, kind = cached
        table = self.node_embedding(gene, kind, dtype)
        if table is None:
            table = torch.zeros(G * K, 0, dtype=dtype, device=device)
        return table, kind

    def pair_rows(self, fused: FusedGeneGraph) -> Tuple[Tensor, Tensor]:
        r"""Rows ``[E]`` of the flattened source and target factor tables of
        every fused edge: ``k * G + g(u)`` and ``k * G + g(v)`` for an edge of
        group :math:`k` from gene :math:`g(u)` to gene :math:`g(v)`. Fixed for a
        graph, so computed once per graph (cached), not at every evaluation.
        """
        cached = self._pair_rows_cache
        if cached is not None and cached[0] is fused.edge_index:
            return cached[1]
        G, R = self.num_genes, self.num_relations
        dst = torch.div(fused.slot, R, rounding_mode='floor')
        rows = (fused.key * G + fused.gene.index_select(0, fused.src),
                fused.key * G + fused.gene.index_select(0, dst))
        self._pair_rows_cache = (fused.edge_index, rows)
        return rows

    def pair_score(self, src_rows: Tensor, dst_rows: Tensor) -> Tensor:
        r"""The gene-pair term :math:`\langle \mathbf{p}^{src}_{k, g(u)},
        \mathbf{p}^{dst}_{k, g(v)} \rangle` ``[E, H]`` of the scores, for edges of
        group :math:`k` (relation and target type) from gene :math:`g(u)` to gene
        :math:`g(v)` (rows from :meth:`pair_rows`): a rank-:obj:`pair_dim` table of
        gene -> gene biases that does not depend on the state.
        """
        if self.pair_table is not None:  # row (k * G + g(u)) * G + g(v)
            cached = self._pair_table_rows_cache  # the rows are fixed for a graph
            if cached is None or cached[0] is not src_rows or cached[1] is not dst_rows:
                G = self.num_genes
                rows = src_rows * G + torch.remainder(dst_rows, G)
                cached = self._pair_table_rows_cache = (src_rows, dst_rows, rows)
            return self.pair_table.view(-1, self.heads).index_select(0, cached[2])
        src = self.pair_src.flatten(0, 1).index_select(0, src_rows)
        dst = self.pair_dst.flatten(0, 1).index_select(0, dst_rows)
        return (src * dst).sum(-1)

    def csr_plan(self, fused: FusedGeneGraph) -> Optional[CSRPlan]:
        r"""The sparse layouts of ``backend='sparse'`` (see
        :func:`~torch_staged.nn._segment.csr_plan`), built once per graph and
        cached; :obj:`None` for the other backends.
        """
        if self.backend != 'sparse':
            return None
        cached = self._csr_cache
        if cached is not None and cached[0] is fused.edge_index:
            return cached[1]
        plan = csr_plan(fused.src, fused.slot, fused.num_nodes * self.num_relations,
                        fused.num_nodes)
        self._csr_cache = (fused.edge_index, plan)
        return plan

    def _batch_major(self, out: Tensor, fused: FusedGeneGraph) -> Tensor:
        r"""The aggregates ``[N*G, R, H, B, D]`` of a batch of :math:`B` states
        as ``[N*G, B, R*H*D]``: each :math:`D`-row moved by one gather
        (:func:`~torch_staged.nn._fused.permute_rows`, a gather backward too),
        with the row order cached per graph and batch size. A strided copy
        (``permute(...).contiguous()``) of the same rows is about 4x slower on
        CPU, where the inner loops over :math:`D = 9` values are short.
        """
        num_nodes, R, H, B, D = out.shape
        if B == 1:
            return out.reshape(num_nodes, 1, R * H * D)
        cached = self._batch_major_cache
        if cached is None or cached[0] is not fused.edge_index or cached[1] != B:
            grid = torch.arange(num_nodes * R * H * B, device=out.device)
            # row (n, b, r, h) of the result is row (n, r, h, b) of the input
            perm = grid.view(num_nodes, R, H, B).permute(0, 3, 1, 2).reshape(-1)
            inverse = grid.view(num_nodes, B, R, H).permute(0, 2, 3, 1).reshape(-1)
            cached = self._batch_major_cache = (fused.edge_index, B, perm, inverse)
        rows = permute_rows(out.reshape(-1, D), cached[2], cached[3])
        return rows.view(num_nodes, B, R * H * D)

    def message(self, alpha: Tensor) -> Tensor:
        r"""The message of an edge: its attention coefficients."""
        # The message of an edge is its attention weight: the gather of the
        # source state is fused with the sum in :meth:`aggregate`, so no
        # per-edge hidden vector is ever stored.
        return alpha

    def aggregate(self, inputs: Tensor, h: Tensor, fused: FusedGeneGraph,
                  edge_index_j: Tensor,
                  index: Tensor, slot_ptr: Tensor, source_shift: Optional[Tensor],
                  dim_size: int) -> Tensor:
        r"""Fused gather and sum :math:`\sum_e \alpha_e \mathbf{h}_{src(e)}` per
        slot, ``[N*G*R, H, D]``.
        """
        plan = self.csr_plan(fused)
        out = weighted_aggregate(inputs, h, edge_index_j, index, slot_ptr,
                                 dim_size, self.backend, plan)  # [NG * R, H, D]
        if source_shift is not None:  # [E, D + P] from _message_shift
            out = out + segment_sum(inputs.unsqueeze(-1) * source_shift.unsqueeze(1),
                                    index, slot_ptr, dim_size, self.backend)
        return out

    def update(self, inputs: Tensor, fused: FusedGeneGraph, batch: int = 1,
               apply_values: bool = True, typed: bool = False) -> Tensor:
        r"""Applies :math:`\mathbf{V}_{r,\tau}` per target cell type,
        ``[N*G, B, R, H, C]`` (:math:`B = 1` without a batch of states); with
        :obj:`apply_values=False` the aggregates ``[N*G, R, H, B, D]``. With
        :obj:`typed` (see :meth:`typed_values`) the matrices are picked row by
        row (and the bias added), else the rows are grouped by cell type.
        """
        # V_{r, tau} applied after aggregation, one matmul per cell type.
        R, H = self.num_relations, self.heads
        agg = inputs.view(-1, R, H, batch, self.message_dim)
        if not apply_values:
            return agg
        if agg.size(0) == 0:
            return agg.new_zeros(0, batch, R, H, self.out_channels)
        if typed:  # one block per (relation, head): [K, R*H, D, C]
            K, C = self.num_cell_types, self.out_channels
            V = self.value.to(agg.dtype).transpose(0, 1).reshape(K, R * H,
                                                                 self.message_dim, C)
            bias = None if self.bias is None else self.bias.to(agg.dtype).view(R * H, C)
            out = typed_linear(agg.view(-1, R * H, self.message_dim), fused.node_type, V,
                               bias)
            return out.view(-1, 1, R, H, C)
        return fused.per_type(agg, lambda t, rows: torch.einsum(
            'nrhbd,rhdc->nbrhc', rows, self.value[:, t].to(rows.dtype)))

    def typed_values(self, fused: FusedGeneGraph, x: Tensor, batch: int) -> bool:
        r"""Whether :meth:`update` applies the value matrices row by row with the
        compiled kernel (:func:`~torch_staged.nn._typed.typed_linear`): on CPU,
        for one state (no batch), concatenated heads, gene nodes of several
        cell types in a mixed order. Otherwise the rows of each cell type are
        gathered, multiplied and scattered back (a slice each when the nodes
        are numbered type by type, :meth:`FusedGeneGraph.type_major`).
        """
        return (_TYPED_OP and not batch and self.concat and not fused.grouped
                and sum(size > 0 for size in fused.type_sizes) > 1 and use_kernel(x))

    def fold_values(self, cell_type: int, weight: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        r"""Folds a linear map of the layer's output into its aggregates.

        For a map :math:`\mathbf{W}` ``[out_dim, K]`` of the output of targets of
        type :math:`\tau` and :math:`\mathbf{a}_v` the output of
        ``forward(..., apply_values=False)``,

        .. math::
            \mathrm{out}_v \mathbf{W} = \mathbf{a}_v \mathbf{U}_\tau +
            \mathbf{b} \mathbf{W},

        where :math:`\mathbf{U}_\tau` ``[R*H*D, K]`` stacks
        :math:`\mathbf{V}_{r,\tau,h} \mathbf{W}_{r,h}` over relations and heads
        (divided by :math:`H` when heads are averaged). Returns
        :math:`(\mathbf{U}_\tau, \mathbf{b}\mathbf{W})` (:obj:`None` without a
        bias). A consumer that applies a linear layer to the output (the
        vector field's MLP) skips the ``[N*G, out_dim]`` intermediate this way.
        """
        R, H, C = self.num_relations, self.heads, self.out_channels
        V = self.value[:, cell_type].to(weight.dtype)  # [R, H, D, C]
        if self.concat:
            U = torch.einsum('rhdc,rhck->rhdk', V, weight.view(R, H, C, -1))
        else:
            U = torch.einsum('rhdc,rck->rhdk', V, weight.view(R, C, -1)) / H
        bias = None if self.bias is None else self.bias.to(weight.dtype) @ weight
        return U.reshape(-1, weight.size(-1)), bias

    def __repr__(self) -> str:
        extra = ''
        if self.attention != 'gat':
            extra += f", attention='{self.attention}'"
        if self.normalize != 'softmax':
            extra += f", normalize='{self.normalize}'"
        if self.pair_dim:
            extra += f", pair_dim={self.pair_dim!r}"
        if not self.score_state:
            extra += ", score_state=False"
        if self.value_channels:
            extra += f", value_channels={self.value_channels}"
        if not self.value_embedding:
            extra += ", value_embedding=False"
        if self.act != 'leaky_relu':
            extra += f", act='{self.act}'"
        if self.backend != 'native':
            extra += f", backend='{self.backend}'"
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, num_genes={self.num_genes}, '
                f'num_cell_types={self.num_cell_types}, heads={self.heads}{extra})')
