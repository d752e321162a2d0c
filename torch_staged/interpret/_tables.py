"""Tables of learned interaction strengths."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from torch_staged.data.tissue_data import TissueData
from torch_staged.typing import CELL, GENE, REGULATES, SIGNALS, EdgeType

METHODS = ('attention', 'jacobian')


def _states(data: TissueData, states: Optional[Tensor]) -> Tensor:
    if states is None:
        if 'traj' in data[GENE]:
            return data.trajectories()
        if 'x' in data[GENE]:
            return data[GENE].x[:, 0].view(1, data.num_cells, data.num_genes)
        raise ValueError("Give 'states' [S, N, G] (graph cell order), or store "
                         "trajectories on the graph with data.set_trajectories()")
    if states.dim() == 2:
        states = states.unsqueeze(0)
    if states.shape[1:] != (data.num_cells, data.num_genes):
        raise ValueError(f"'states' must have shape [S, {data.num_cells}, "
                         f"{data.num_genes}] (got {list(states.shape)})")
    return states


@torch.no_grad()
def _attention(model, data, state: Tensor) -> Dict[EdgeType, Tensor]:
    att = model.func.attention_weights(model.initial_state(data, state))
    return {rel: alpha.mean(-1) for rel, (_, alpha) in att.items()}


def edge_scores(model, data: TissueData, states: Optional[Tensor] = None,
                method: str = 'jacobian') -> Dict[EdgeType, Tensor]:
    r"""Per-edge learned interaction strength, averaged over :obj:`states`.

    Args:
        model (STAGED): A fitted model.
        data (TissueData): The tissue.
        states (Tensor, optional): ``[S, N, G]`` expression states (graph cell
            order) at which to evaluate, e.g. the observed trajectory. Defaults to
            the stored trajectories.
        method (str, optional): ``'jacobian'``: the signed derivative
            :math:`\partial \dot{x}_v / \partial x_u` through the edge (see
            :meth:`~torch_staged.nn.STAGEDODEFunc.edge_jacobian`), in rate of
            the target per unit of the source: the gate, the source's learned
            response and the target's sensitivity together, comparable across
            targets and receptors. ``'attention'``: the attention coefficient
            (averaged over heads); with the default static signed gates this is
            the edge's own learned strength in :math:`(-1, 1)`, the same at every
            state, but its scale is relative to the learned value features, so
            rank by the Jacobian. (default: :obj:`'jacobian'`)

    Returns:
        ``{relation: [E_r] scores}`` in each relation's own edge order.
    """
    if method not in METHODS:
        raise ValueError(f"'method' must be one of {METHODS} (got '{method}')")
    states = _states(data, states).to(model.func.decay)
    model.func.set_graph(data)
    relations = model.func.conv.relations
    total = None
    for state in states:
        if method == 'attention':
            scores = _attention(model, data, state)
        else:
            x = model.initial_state(data, state)
            scores = dict(zip(relations, model.func.edge_jacobian(x)))
        total = scores if total is None else {r: total[r] + scores[r] for r in total}
    return {r: v / states.size(0) for r, v in total.items()}


Scores = Dict[EdgeType, Tensor]
#: What an ensemble may be given as.
ENSEMBLE_TYPES = (list, tuple, torch.nn.ModuleList)
EMPTY_ENSEMBLE = ("'model' is an empty sequence: pass a fitted model or a list of "
                  "fitted models (an ensemble)")


def ensemble_members(model) -> list:
    """The models of a single fitted model or of an ensemble (a list, tuple or
    :class:`~torch.nn.ModuleList`); raises on an empty one.
    """
    if not isinstance(model, ENSEMBLE_TYPES):
        return [model]
    if len(model) == 0:
        raise ValueError(EMPTY_ENSEMBLE)
    return list(model)


def _members(model, scores) -> Tuple[list, Optional[List[Scores]]]:
    """The models (and per-member scores) of a single model or an ensemble."""
    models = ensemble_members(model)
    if scores is None:
        return models, None
    listed = isinstance(scores, (list, tuple))
    members = list(scores) if listed else [scores]
    if len(members) != len(models) or listed != isinstance(model, ENSEMBLE_TYPES):
        raise ValueError(f"'scores' must be one edge_scores() dict for one model, or a "
                         f"list of one edge_scores() dict per model of an ensemble "
                         f"(got {len(members) if listed else 'a dict'} for "
                         f"{len(models) if len(models) > 1 else 'one'} model(s))")
    relations = {frozenset(m) for m in members}
    if len(relations) > 1:
        raise ValueError("The scores of the ensemble's models have different relations "
                         "(some without 'signals'): every model of an ensemble must be "
                         "the same variant")
    return models, members


def check_ensemble(models: list, data: TissueData) -> None:
    """Raises unless :obj:`models` is a flat list of STAGED models of this
    tissue's gene panel that know its cell types, of one variant (the same
    relations), on one device with one dtype.
    """
    if not all(isinstance(m, torch.nn.Module) for m in models):
        kinds = sorted({type(m).__name__ for m in models})
        raise TypeError(f"'model' must be a fitted STAGED model or a flat list of "
                        f"them, an ensemble (got members of type {kinds})")
    relations = set()
    for k, member in enumerate(models):
        func = getattr(member, 'func', None)
        if func is None or func.num_genes != data.num_genes or (
                func.num_cell_types < data.num_cell_types):
            raise ValueError(
                f"Model {k} of the ensemble does not fit this tissue: every model "
                f"must be a STAGED model with num_genes={data.num_genes} and at "
                f"least num_cell_types={data.num_cell_types}")
        relations.add(tuple(func.conv.relations))
    if len(relations) > 1:
        raise ValueError(f"The models of the ensemble have different relations "
                         f"({sorted(relations)}): every model of an ensemble must be "
                         f"the same variant")
    kinds = {(m.func.decay.device, m.func.decay.dtype) for m in models}
    if len(kinds) > 1:
        raise ValueError(f"The models of the ensemble are on different devices or "
                         f"dtypes ({sorted(map(str, kinds))}): move them to one with "
                         f"model.to(device, dtype)")


def _group(columns: Dict[str, np.ndarray], values: List[np.ndarray]) -> pd.DataFrame:
    """One row per key of :obj:`columns` (``[E]`` arrays of the edges' keys),
    from :obj:`values` (:math:`M` arrays ``[E]``, one per member): the members'
    mean signed score and mean absolute score, and, for :math:`M > 1`, the sd
    over members of each member's mean absolute score over the row's edges.
    """
    value = np.stack(values)  # [M, E]
    out = pd.DataFrame(dict(columns, score=value.mean(0),
                            abs_score=np.abs(value).mean(0)))
    keys = list(columns)
    spread = len(values) > 1
    if spread:
        for k, v in enumerate(values):
            out[f'_abs{k}'] = np.abs(v)
    grouped = out.groupby(keys, sort=False, observed=True)
    table = grouped.agg(score=('score', 'mean'), abs_score=('abs_score', 'mean'),
                        n_edges=('score', 'size')).reset_index()
    if spread:
        per_member = grouped[[f'_abs{k}' for k in range(len(values))]].mean()
        table['abs_score_sd'] = per_member.std(axis=1, ddof=1).to_numpy()
    return table.sort_values('abs_score', ascending=False, kind='stable'
                             ).reset_index(drop=True)


def interaction_tables(model, data: TissueData, states: Optional[Tensor] = None,
                       method: str = 'jacobian',
                       scores: Union[Scores, Sequence[Scores], None] = None,
                       ) -> Tuple[pd.DataFrame, pd.DataFrame]:
    r"""Learned interaction strengths aggregated the way a biologist reads them.

    * intracellular: one row per (cell type, source gene, target gene) of the
      prior GRN;
    * intercellular: one row per (ligand, receptor, sender type, receiver type).

    Each row has ``score`` (the mean per-edge score, signed for the Jacobian),
    ``abs_score`` (the mean absolute score, used to rank) and ``n_edges``; rows
    are sorted by ``abs_score``, strongest first.

    An **ensemble** (a list of :math:`M` models fitted to the same tissue, e.g.
    from different initialisations) gives the members' mean of both,
    :math:`\bar{s}_e = \frac{1}{M}\sum_m s^{(m)}_e` and
    :math:`\frac{1}{M}\sum_m |s^{(m)}_e|` per edge :math:`e`, averaged over the
    row's edges, and one more column, ``abs_score_sd``: the standard deviation
    over the members of each member's ``abs_score`` of the row :math:`R`,

    .. math::
        \mathrm{sd}_m\Big(\frac{1}{|R|} \sum_{e \in R} |s^{(m)}_e|\Big)
        \quad (\text{divisor } M - 1),

    how much the row's strength depends on the fit. Rows are ranked by the
    ensemble's ``abs_score``. A single fit's ranking of weak edges varies
    with its initialisation; averaging a few fits reduces that variance (see
    the README's "How well it learns").

    Args:
        model (STAGED or list of STAGED): A fitted model, or an ensemble (a
            list, tuple or :class:`~torch.nn.ModuleList` of models of the same
            variant fitted to this tissue).
        data (TissueData): The tissue.
        states (Tensor, optional): See :func:`edge_scores`.
        method (str, optional): ``'attention'`` or ``'jacobian'``.
        scores (dict or list of dict, optional): Per-edge scores already
            computed by :func:`edge_scores` (one dict per model of an
            ensemble); then :obj:`states` and :obj:`method` are unused.

    Returns:
        ``(intracellular, intercellular)`` DataFrames with the key columns
        (``cell_type, source, target``, resp. ``ligand, receptor,
        sender_type, receiver_type``), then ``score, abs_score, n_edges``
        (and ``abs_score_sd`` for an ensemble).

    Example:
        >>> members = [model_a, model_b, model_c]  # doctest: +SKIP
        >>> intra, inter = interaction_tables(members, data)  # doctest: +SKIP
    """
    models, members = _members(model, scores)
    if members is None:
        if len(models) > 1:
            check_ensemble(models, data)
        members = [edge_scores(m, data, states, method) for m in models]
    genes = np.asarray(data.gene_names)
    types = np.asarray(data.cell_type_names)
    G = data.num_genes
    cell_type = data[CELL].cell_type.cpu().numpy()

    def frame(rel: EdgeType, columns: Dict[str, np.ndarray]) -> pd.DataFrame:
        return _group(columns, [m[rel].detach().cpu().numpy() for m in members])

    src, dst = (v.cpu().numpy() for v in data[REGULATES].edge_index)
    intra = frame(REGULATES, {'cell_type': types[cell_type[dst // G]],
                              'source': genes[src % G], 'target': genes[dst % G]})
    if all(SIGNALS in m for m in members) and data[SIGNALS].num_edges > 0:
        src, dst = (v.cpu().numpy() for v in data[SIGNALS].edge_index)
        pairs = np.asarray(data.lr_pairs, dtype=object).reshape(-1, 2)
        lr = data[SIGNALS].lr_pair.cpu().numpy()
        inter = frame(SIGNALS, {'ligand': pairs[lr, 0].astype(str),
                                'receptor': pairs[lr, 1].astype(str),
                                'sender_type': types[cell_type[src // G]],
                                'receiver_type': types[cell_type[dst // G]]})
    else:
        inter = pd.DataFrame(columns=['ligand', 'receptor', 'sender_type',
                                      'receiver_type', 'score', 'abs_score', 'n_edges']
                             + (['abs_score_sd'] if len(members) > 1 else []))
    return intra, inter
