from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor
from torchdiffeq import odeint, odeint_adjoint

from torch_staged.nn._fused import FusedGeneGraph
from torch_staged.nn.ode_func import STAGEDODEFunc
from torch_staged.typing import CELL, GENE, REGULATES, RELATIONS

SOLVER_KWARGS = ('method', 'rtol', 'atol', 'options', 'adjoint')
#: the values of keys that configs of older versions lack
LEGACY_CONFIG = {'normalize': 'softmax', 'pair_dim': 0, 'score_state': True,
                 'value_channels': 0, 'value_embedding': True}


class IntegrationError(RuntimeError):
    """Raised when the state becomes NaN/Inf or the solver's step underflows."""


class STAGED(torch.nn.Module):
    r"""The STAGED graph neural ODE (`arXiv:2507.11660
    <https://arxiv.org/abs/2507.11660>`_): every cell an agent, every gene a
    node, integrated in continuous time.

    .. math::
        \mathbf{x}(t) = \mathbf{x}(t_0) + \int_{t_0}^{t} f_\theta(s,
        \mathbf{x}(s))\, ds

    with the vector field :class:`~torch_staged.nn.STAGEDODEFunc`, solved by
    :func:`torchdiffeq.odeint` (or :func:`torchdiffeq.odeint_adjoint` with
    :obj:`adjoint=True`, :math:`O(1)` memory in the number of steps). With
    :obj:`augment > 0` every gene node carries latent channels that start at 0
    and are not observed.

    Args:
        num_genes (int): Size :math:`G` of the gene panel.
        num_cell_types (int): Number :math:`K` of cell types.
        hidden_channels (int, optional): Message size per head. (default: :obj:`16`)
        mlp_channels (int, optional): Hidden size of the per-type MLP.
            (default: :obj:`32`)
        heads (int, optional): Attention heads. (default: :obj:`1`)
        gene_dim (int, optional): Gene embedding size. (default: :obj:`8`)
        type_dim (int, optional): Cell-type embedding size (sender-type-specific
            signalling). On ``benchmarks/science.py`` 4 recovers the GRN of a
            tissue whose signalling depends on the sender's type better (0.994
            vs 0.988 AUROC with the other defaults) and ranks a type-independent
            true pair lower among its decoys (3rd and 2nd of 7 in two of three
            seeds; README, "How well it learns"). (default: :obj:`0`)
        edge_dim (int, optional): Edge attribute size. (default: :obj:`1`)
        augment (int, optional): Latent channels per gene node. (default: :obj:`0`)
        attention (str, optional): ``'gat'``, ``'gatv2'`` or ``'mean'``.
            (default: :obj:`'gat'`)
        act (str, optional): Score non-linearity of the attention (see
            :class:`~torch_staged.nn.STAGEDODEFunc`).
            (default: :obj:`'smooth_leaky_relu'`)
        signalling (bool, optional): Use the intercellular ``signals`` relation;
            :obj:`False` gives a cell-autonomous graph ODE (the ``no_signalling``
            baseline). (default: :obj:`True`)
        backend (str, optional): ``'sparse'`` (CSR sparse x dense kernels of
            :mod:`torch.sparse`), ``'native'`` or ``'torch_scatter'`` (see
            :class:`~torch_staged.nn.STAGEDConv`). (default: :obj:`'sparse'`)
        method (str, optional): Any :mod:`torchdiffeq` method. (default:
            :obj:`'dopri5'`)
        rtol (float, optional): Relative tolerance. (default: :obj:`1e-3`)
        atol (float, optional): Absolute tolerance. (default: :obj:`1e-4`)
        options (dict, optional): Solver options (e.g. ``{'step_size': 0.1}``).
        adjoint (bool, optional): Back-propagate with the adjoint method.
            (default: :obj:`False`)
        normalize (str, optional): ``'softmax'`` attention or ``'gate'``
            (signed tanh gates per edge; see :class:`~torch_staged.nn.STAGEDConv`).
            Gates let regulators of one target act with opposite signs and
            switch false prior edges off. They start equal (every gate
            0.50, no random head start per gene pair): on
            ``benchmarks/science.py`` that lifted staged_sim's GRN AUROC from
            0.974 to 0.982 at the same cost (README, "How well it learns").
            (default: :obj:`'gate'`)
        pair_dim (int or str, optional): The gene-pair score term of the layer
            (see :class:`~torch_staged.nn.STAGEDConv`): ``'full'`` (a free logit
            per prior gene pair and receiving type, :math:`2 K G^2` parameters),
            a rank, or 0 (none). (default: :obj:`'full'`)
        score_state (bool, optional): Whether the attention scores see the
            expression state. :obj:`False` (static gates): each edge's gate
            depends on the gene pair, the cell types and the distance only, so
            it *is* the edge's learned strength, and a batch of states shares
            it. (default: :obj:`False`)
        value_channels (int, optional): Node-level value features
            :math:`\psi(x_u, e_{g(u)})` of the sources (a learned non-linear
            response per regulator). (default: :obj:`8`)
        value_embedding (bool, optional): Whether the messages carry the
            sources' embeddings; :obj:`False` centres them at a silent source,
            so that an edge cannot act as a constant bias. (default: :obj:`False`)

        ``normalize='softmax', pair_dim=0, score_state=True, value_channels=0,
        value_embedding=True`` is the original STAGED layer. The defaults were
        chosen on ``benchmarks/science.py`` (README, "How well it learns").

    Shapes:
        - **input:** a tissue graph with :math:`N` cells, times :math:`(T)`,
          initial state :math:`(N, G)` in the graph's cell order
        - **output:** trajectory :math:`(T, N, G)` (graph's cell order)
    """

    def __init__(self, num_genes: int, num_cell_types: int, hidden_channels: int = 16,
                 mlp_channels: int = 32, heads: int = 1, gene_dim: int = 8,
                 type_dim: int = 0, edge_dim: int = 1, augment: int = 0, attention: str = 'gat',
                 act: str = 'smooth_leaky_relu', signalling: bool = True,
                 backend: str = 'sparse', method: str = 'dopri5', rtol: float = 1e-3,
                 atol: float = 1e-4, options: Optional[Dict[str, Any]] = None,
                 adjoint: bool = False, normalize: str = 'gate',
                 pair_dim: Union[int, str] = 'full', score_state: bool = False,
                 value_channels: int = 8, value_embedding: bool = False):
        super().__init__()
        if not isinstance(augment, int) or augment < 0:
            raise ValueError(f"'augment' must be an integer >= 0 (got {augment!r})")
        self.num_genes = num_genes
        self.num_cell_types = num_cell_types
        self.augment = augment
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = dict(options or {})
        self.adjoint = adjoint
        self._config = dict(num_genes=num_genes, num_cell_types=num_cell_types,
                            hidden_channels=hidden_channels, mlp_channels=mlp_channels,
                            heads=heads, gene_dim=gene_dim, type_dim=type_dim,
                            edge_dim=edge_dim,
                            augment=augment, attention=attention, act=act,
                            signalling=signalling, backend=backend,
                            method=method, rtol=rtol, atol=atol,
                            options=self.options, adjoint=adjoint, normalize=normalize,
                            pair_dim=pair_dim, score_state=score_state,
                            value_channels=value_channels,
                            value_embedding=value_embedding)
        self.func = STAGEDODEFunc(num_genes, num_cell_types, channels=1 + augment,
                                  hidden_channels=hidden_channels,
                                  mlp_channels=mlp_channels, heads=heads,
                                  gene_dim=gene_dim, type_dim=type_dim,
                                  edge_dim=edge_dim,
                                  attention=attention, act=act, backend=backend,
                                  relations=RELATIONS if signalling else (REGULATES, ),
                                  normalize=normalize, pair_dim=pair_dim,
                                  score_state=score_state,
                                  value_channels=value_channels,
                                  value_embedding=value_embedding)
        self.signalling = signalling
        self._repeated = None

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments (JSON-able), for checkpoints."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> 'STAGED':
        """Builds a model from :attr:`config`. Configs written before signed gates
        and gene-pair scores became the defaults (without those keys) get the
        layer they were trained with: ``normalize='softmax', pair_dim=0``.
        """
        return cls(**{**LEGACY_CONFIG, **config})

    def reset_parameters(self):
        r"""Resets all learnable parameters."""
        self.func.reset_parameters()

    @property
    def nfe(self) -> int:
        """Function evaluations since the last reset (see :meth:`reset_nfe`)."""
        return self.func.nfe

    def reset_nfe(self):
        """Sets the evaluation counter to 0."""
        self.func.nfe = 0

    def initial_state(self, data, x0: Optional[Tensor] = None) -> Tensor:
        r"""The solver state ``[N*G, 1 + augment]`` from :obj:`x0` ``[N, G]`` (or
        from ``data['gene'].x[:, 0]``).
        """
        num_nodes = data[GENE].num_nodes
        if x0 is None:
            if 'x' not in data[GENE]:
                raise ValueError("Give 'x0' [N, G] or build the graph with x=...")
            x0 = data[GENE].x[:, :1]
        x0 = x0.reshape(-1, 1)
        if x0.size(0) != num_nodes:
            raise ValueError(f"'x0' must hold N*G = {num_nodes} values, one per gene "
                             f"node (got {x0.size(0)})")
        x0 = x0.to(self.func.decay)
        if self.augment:
            x0 = torch.cat([x0, x0.new_zeros(num_nodes, self.augment)], dim=-1)
        return x0

    def integrate(self, state: Tensor, t: Tensor, func: Optional[torch.nn.Module] = None,
                  options: Optional[Dict[str, Any]] = None) -> Tensor:
        r"""Integrates a full solver state ``[N*G, F]`` over :obj:`t`; returns
        ``[T, N*G, F]``. The graph must be set (:meth:`forward` does it).
        :obj:`func` and :obj:`options` replace the vector field and the solver
        options (used by :meth:`solve_intervals`).
        """
        t = t.to(state)
        solve = odeint_adjoint if self.adjoint else odeint
        options = self.options if options is None else options
        kwargs = dict(method=self.method, rtol=self.rtol, atol=self.atol,
                      options=options or None)
        if self.adjoint:
            kwargs['adjoint_params'] = tuple(p for p in self.parameters()
                                             if p.requires_grad)
        try:
            out = solve(self.func if func is None else func, state, t, **kwargs)
        except AssertionError as err:  # torchdiffeq's step-size underflow
            raise IntegrationError(
                f"The ODE solver failed ({err}) after {self.func.nfe} evaluations: "
                "the dynamics are too stiff or have blown up. Try a smaller learning "
                "rate, gradient clipping, looser tolerances or method='rk4' with a "
                "small options={'step_size': ...}") from None
        if not bool(torch.isfinite(out).all()):
            bad = (~torch.isfinite(out)).flatten(1).any(1).nonzero().view(-1)
            raise IntegrationError(
                f"The state became NaN/Inf at time index {int(bad[0])} "
                f"(t = {float(t[bad[0]]):.4g}) after {self.func.nfe} evaluations. "
                "Try a smaller learning rate or step size, tighter tolerances, "
                "gradient clipping, or standardised expression")
        return out

    def solve_intervals(self, graph, x0: Tensor, dt: Tensor) -> Tensor:
        r"""Solves :math:`C` independent initial-value problems on the same tissue
        as **one** stacked solve: problem :math:`c` starts from
        :math:`\mathbf{x}_c` and runs for :math:`\Delta t_c`.

        The :math:`C` states are the block-diagonal copies of the graph
        (:meth:`~torch_staged.nn.FusedGeneGraph.repeat`) and the time is
        rescaled to :math:`s \in [0, 1]`,

        .. math::
            \frac{d\mathbf{x}_c}{ds} = \Delta t_c \, f_\theta(\mathbf{x}_c),

        which is exact because :math:`f_\theta` does not depend on time. One
        solver call and one backward pass replace :math:`C`; the adaptive step
        follows the hardest copy. With static scores (``score_state=False``, or
        ``attention='mean'``) the :math:`C` states are a batch ``[N*G, C, F]``
        of one graph, so the attention coefficients are computed once per
        evaluation, not :math:`C` times. (Clamped cells need their own times:
        solve those one by one with :meth:`forward`.)

        Args:
            graph: The tissue (:class:`~torch_geometric.data.HeteroData` or fused).
            x0 (Tensor): ``[C, N*G]`` or ``[C, N, G]`` initial expression (graph
                cell order).
            dt (Tensor): ``[C]`` positive durations.

        Returns:
            The expression after :math:`\Delta t_c`, shaped like :obj:`x0`.
        """
        copies = x0.size(0)
        dt = dt.to(self.func.decay).reshape(-1)
        if dt.numel() != copies or not bool((dt > 0).all()):
            raise ValueError(f"'dt' must hold {copies} positive durations, one per "
                             f"initial state (got {dt.tolist()})")
        fused = self._set_copies(graph, copies)
        state = self._stacked_state(x0)
        if self.static_scores:
            scale = dt.view(1, -1, 1)
        else:
            scale = dt.repeat_interleave(fused.num_nodes).unsqueeze(-1)
        options = dict(self.options)
        if 'step_size' in options:  # the same largest step in real time
            options['step_size'] = float(options['step_size']) / float(dt.max())
        rescaled = _Rescaled(self.func, scale)
        s = torch.tensor([0.0, 1.0], dtype=state.dtype, device=state.device)
        out = self.integrate(state, s, func=rescaled, options=options)
        self.func.set_graph(fused)
        return self._unstack(out[-1], x0.shape)

    def rates(self, graph, x: Tensor) -> Tensor:
        r"""The rates of change :math:`f_\theta(\mathbf{x}_c)` of :math:`C`
        expression states of the same tissue in **one** evaluation of the
        vector field (block-diagonal copies of the graph; latent channels,
        if any, start at 0).

        Args:
            graph: The tissue (:class:`~torch_geometric.data.HeteroData` or fused).
            x (Tensor): ``[C, N*G]`` or ``[C, N, G]`` expression (graph cell order).

        Returns:
            :math:`d\mathbf{x}/dt` of the expression channel, shaped like :obj:`x`.
        """
        fused = self._set_copies(graph, x.size(0))
        state = self._stacked_state(x)
        out = self.func(torch.zeros((), dtype=state.dtype, device=state.device), state)
        self.func.set_graph(fused)
        return self._unstack(out, x.shape)

    @property
    def static_scores(self) -> bool:
        """Whether the attention coefficients do not depend on the state
        (``score_state=False`` or ``attention='mean'``), so that a batch of
        states shares them.
        """
        return not self.func.conv.score_state

    def _set_copies(self, graph, copies: int) -> FusedGeneGraph:
        """Sets the graph of :obj:`copies` copies of :obj:`graph` (cached; the
        graph itself with static scores, whose states are then batched) and
        returns the fused single graph (to set back after the solve).
        """
        fused = self.func.set_graph(graph).graph
        if self.static_scores:
            return fused
        cached = self._repeated  # (the graph's edge index, copies, repeated graph)
        if cached is None or cached[0] is not fused.edge_index or cached[1] != copies:
            self._repeated = (fused.edge_index, copies, fused.repeat(copies))
        self.func.set_graph(self._repeated[2])
        return fused

    def _stacked_state(self, x: Tensor) -> Tensor:
        """The solver state of :math:`C` expression states ``[C, ...]``:
        ``[N*G, C, F]`` (a batch) with static scores, else ``[C*N*G, F]``
        (the copies of the repeated graph).
        """
        copies = x.size(0)
        state = x.reshape(copies, -1, 1).to(self.func.decay)
        if self.augment:
            state = torch.cat([state, state.new_zeros(state.shape[:2] + (self.augment, ))],
                              -1)
        return state.transpose(0, 1) if self.static_scores else state.flatten(0, 1)

    def _unstack(self, state: Tensor, shape: torch.Size) -> Tensor:
        """The expression channel of a stacked solver state, shaped ``shape``."""
        if self.static_scores:
            return state[..., 0].t().reshape(shape)
        return state[:, 0].reshape(shape)

    def forward(self, data, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        r"""Integrates from :obj:`x0` ``[N, G]`` at :obj:`t[0]` and returns the
        expression trajectory ``[len(t), N, G]`` (graph cell order).
        """
        self.func.set_graph(data)
        state = self.initial_state(data, x0)
        out = self.integrate(state, t)
        num_cells = data[CELL].num_nodes
        return out[..., 0].reshape(t.numel(), num_cells, self.num_genes)

    def __repr__(self) -> str:
        extra = ''
        if self.func.attention != 'gat':
            extra += f", attention='{self.func.attention}'"
        if not self.signalling:
            extra += ', signalling=False'
        return (f'{self.__class__.__name__}(num_genes={self.num_genes}, '
                f'num_cell_types={self.num_cell_types}, augment={self.augment}, '
                f"method='{self.method}', adjoint={self.adjoint}{extra})")


class _Rescaled(torch.nn.Module):
    """``scale * func(t, x)``: a vector field on rescaled time."""

    def __init__(self, func: torch.nn.Module, scale: Tensor):
        super().__init__()
        self.func = func
        self.scale = scale

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.func(t, x) * self.scale


#: The baselines of the paper's ablations, as :class:`STAGED` keyword arguments.
BASELINES: Dict[str, Dict[str, Any]] = {
    'staged': {},
    'no_signalling': {'signalling': False},
    'no_attention': {'attention': 'mean'},
}


def make_model(name: str, num_genes: int, num_cell_types: int, **kwargs) -> STAGED:
    r"""Builds STAGED or one of its baselines by name.

    * ``'staged'``: the full model;
    * ``'no_signalling'``: intercellular edges removed (a cell-autonomous
      graph ODE);
    * ``'no_attention'``: uniform (mean) aggregation instead of attention.

    Extra keyword arguments go to :class:`STAGED`.
    """
    if name not in BASELINES:
        raise ValueError(f"Unknown model '{name}': choose one of {list(BASELINES)}")
    return STAGED(num_genes, num_cell_types, **{**kwargs, **BASELINES[name]})
