"""Fitted-model results back into the AnnData."""
import json
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from torch import Tensor

from torch_staged.interpret import edge_scores, interaction_tables
from torch_staged.interpret._tables import METHODS, check_ensemble, ensemble_members
from torch_staged.io._constants import Key
from torch_staged.io._read import Trajectories, _cell_values, cell_positions
from torch_staged.io._validate import (
    check_anndata,
    check_model,
    check_obs_key,
    numeric_times,
)
from torch_staged.typing import CELL, GENE, NEAR, SIGNALS

#: Orientation of ``obsp[f'{key_added}_signalling']``.
ORIENTATION = 'sender_rows_receiver_columns'


def _row_lookup(adata, traj: Trajectories):
    """For every row of :obj:`adata`, its cell (input order) and time index, -1
    when the row is not part of the trajectories.
    """
    keys = [traj.cell_key, traj.time_key] + (
        [traj.library_key] if traj.library_key is not None else [])
    for key in keys:
        if key not in adata.obs.columns:
            raise ValueError(
                f"adata.obs has no column {key!r}, which the trajectories were read "
                f"with (cell_key={traj.cell_key!r}, time_key={traj.time_key!r}, "
                f"library_key={traj.library_key!r}): write into the AnnData the "
                f"trajectories were read from")
    check_obs_key(adata, traj.cell_key, 'cell_key', 'cell ids')
    time_col = check_obs_key(adata, traj.time_key, 'time_key', 'observation times')
    if traj.library_key is not None:
        check_obs_key(adata, traj.library_key, 'library_key', 'section ids')
    cell = cell_positions(traj.cell_ids,
                          _cell_values(adata.obs, traj.cell_key, traj.library_key))
    row_t = numeric_times(time_col, traj.time_key)
    t = traj.t.detach().cpu().double().numpy()
    nearest = np.clip(np.searchsorted(t, row_t), 0, t.size - 1)
    lower = np.clip(nearest - 1, 0, t.size - 1)
    nearest = np.where(np.abs(t[lower] - row_t) < np.abs(t[nearest] - row_t),
                       lower, nearest)
    tol = 1e-5 * max(float(np.abs(t).max()), 1.0)
    time = np.where(np.abs(t[nearest] - row_t) <= tol, nearest, -1)
    valid = (cell >= 0) & (time >= 0)
    return cell.astype(np.int64), time.astype(np.int64), valid


def _row_graph(links, cell: np.ndarray, time: np.ndarray, rows: np.ndarray,
               num_rows: int, num_cells: int) -> sparse.csr_matrix:
    r"""The row x row signalling graph: at every time :math:`k`, the cell graph
    :math:`S_k` ``[N, N]`` pulled back to the rows observed at :math:`k`,
    :math:`P_k S_k P_k^\top` with :math:`P_k` ``[n_obs, N]`` the one-hot map
    of each row to its cell (long format) or matched anchor (snapshots).
    """
    out = sparse.csr_matrix((num_rows, num_rows), dtype=np.float64)
    for k, link in enumerate(links):
        here = rows[time[rows] == k]
        if link is None or here.size == 0:
            continue
        src, dst, value = link
        P = sparse.csr_matrix((np.ones(here.size), (here, cell[here])),
                              shape=(num_rows, num_cells))
        S = sparse.csr_matrix((value, (src, dst)), shape=(num_cells, num_cells))
        out = out + P @ S @ P.T
    out = out.tocsr().astype(np.float32)
    out.sum_duplicates()
    return out


def _snapshot_lookup(adata, traj: Trajectories):
    """For every row of a snapshot AnnData (rows named in ``traj.matches``), its
    anchor cell (input order) and time index; -1 when the row is not matched.
    """
    table = traj.matches.reindex(adata.obs_names)
    known = table['anchor'].notna().to_numpy() & (table['anchor'].fillna(-1) >= 0
                                                  ).to_numpy()
    cell = np.full(adata.n_obs, -1, dtype=np.int64)
    if known.any():
        anchor = table.loc[known, 'anchor_cell'].to_numpy()
        if traj.library_key is not None and 'anchor_library' in table.columns:
            values = np.empty(anchor.size, dtype=object)
            values[:] = list(zip(table.loc[known, 'anchor_library'].tolist(),
                                 anchor.tolist()))
        else:
            values = anchor
        cell[known] = cell_positions(traj.cell_ids, values)
    t = traj.t.detach().cpu().double().numpy()
    row_t = table['time'].to_numpy(dtype=np.float64)
    nearest = np.clip(np.searchsorted(t, np.nan_to_num(row_t)), 0, t.size - 1)
    lower = np.clip(nearest - 1, 0, t.size - 1)
    nearest = np.where(np.abs(t[lower] - row_t) < np.abs(t[nearest] - row_t),
                       lower, nearest)
    tol = 1e-5 * max(float(np.abs(t).max()), 1.0)
    time = np.where(np.abs(t[nearest] - row_t) <= tol, nearest, -1)
    valid = known & (cell >= 0) & (time >= 0)
    return cell, time.astype(np.int64), valid


def _is_snapshot(adata, traj: Trajectories) -> bool:
    """Whether :obj:`adata` holds the snapshot rows that ``traj`` was inferred
    from (rather than the long-format trajectories themselves).
    """
    return traj.matches is not None and bool(
        adata.obs_names.isin(traj.matches.index).any())


def _scatter_pairs(score: Tensor, cell: Tensor, lr: Tensor, num_cells: int,
                   num_pairs: int) -> Tensor:
    out = score.new_zeros(num_cells * num_pairs)
    return out.index_add_(0, cell * num_pairs + lr, score.abs()).view(num_cells,
                                                                     num_pairs)


def _members(model, traj: Trajectories, model_genes, model_cell_types) -> list:
    """The checked models of a single fitted model or of an ensemble."""
    models = ensemble_members(model)
    for k, member in enumerate(models):
        try:
            check_model(member, traj.genes, traj.cell_types, model_genes,
                        model_cell_types)
        except ValueError as err:
            if len(models) == 1:
                raise
            raise ValueError(f"Model {k} of the ensemble: {err}") from None
    check_ensemble(models, traj.data)
    return models


def _mean_abs(scores: list, relation) -> Optional[Tensor]:
    """``[E_r]`` mean over the members' score dicts of :math:`|s_e|`
    (:obj:`None` if they have no scores of :obj:`relation`).
    """
    if any(relation not in m for m in scores):
        return None
    return torch.stack([m[relation].detach().abs() for m in scores]).mean(0)


def write_results(
    adata,
    model,
    trajectories: Trajectories,
    *,
    key_added: str = Key.uns.default,
    method: str = 'jacobian',
    model_genes: Optional[Sequence[str]] = None,
    model_cell_types: Optional[Sequence[str]] = None,
    inplace: bool = False,
):
    r"""Writes a fitted model's predictions and interaction strengths into
    AnnData, under documented keys.

    With ``key = key_added``:

    * ``layers[f'{key}_pred']`` ``[n_obs, n_vars]`` (float32): the prediction
      of every row, i.e. the model integrated from each cell's first observed
      state over the observed times, at the row's (cell, time); NaN for genes
      outside the panel and for rows that are not in the trajectories.
    * ``obsm[f'{key}_incoming']`` ``[n_obs, L]`` (DataFrame, columns
      ``'ligand^receptor'``): per row, :math:`\sum |s_e|` over the ``signals``
      edges entering the row's cell, per ligand -> receptor pair;
      ``obsm[f'{key}_outgoing']``: the same for the edges leaving it.
    * ``obsp[f'{key}_signalling']`` ``[n_obs, n_obs]`` (sparse CSR, never
      dense): entry ``(i, j)`` is :math:`\sum |s_e|` over all pairs from the
      cell of row ``i`` (sender) to the cell of row ``j`` (receiver), for
      neighbouring cells at the **same** time only; the graph is block
      diagonal by time with :math:`T \cdot E_c` entries.
    * ``uns[key]['intracellular']`` and ``uns[key]['intercellular']``: the
      DataFrames of :func:`~torch_staged.interpret.interaction_tables`;
      ``uns[key]['lr_pairs']``: the :math:`L` pairs in obsm column order;
      ``uns[key]['params']``: the method, the keys, times, genes, cell types,
      the model's repr and its config (a JSON string; of the first model of an
      ensemble) and ``ensemble_size`` (1 for one model).

    **Snapshots.** When :obj:`trajectories` were read from the output of
    :func:`~torch_staged.trajectory.infer_trajectories` and :obj:`adata` is the
    snapshot data it was inferred from (its ``obs_names`` are in
    :attr:`Trajectories.matches`), every input row (every cell of every
    section at every time) gets the results of the anchor cell it was matched
    to, at its own time: its prediction, its incoming / outgoing signalling,
    and in ``obsp`` the links between rows whose anchors are neighbours (the
    anchors' graph pulled back to the rows of each time). The user's
    ``obs_names`` and all other slots are kept, and ``uns[key]['matches']``
    records which anchor every row was matched to (columns ``time``,
    ``anchor``, ``anchor_cell``, ``weight``).

    The per-edge score :math:`s_e` is the one of
    :func:`~torch_staged.interpret.edge_scores` evaluated at the observed state
    of the row's time; the ``uns`` tables average it over all observed times.
    Everything is computed first and written last, so an error leaves
    :obj:`adata` untouched; everything survives ``write_h5ad`` /
    ``read_h5ad``.

    Args:
        adata (anndata.AnnData): Long-format data with the rows of
            :obj:`trajectories` (matched by ``(cell, time)``), typically the one
            they were read from.
        model (STAGED or list of STAGED): The fitted model, or an ensemble of
            models fitted to the same tissue (a list, tuple or
            :class:`~torch.nn.ModuleList`): then the prediction is the
            members' mean, the tables are those of
            :func:`~torch_staged.interpret.interaction_tables` for the ensemble
            (with ``abs_score_sd``), and :math:`|s_e|` in ``obsm`` / ``obsp``
            is the members' mean of :math:`|s^{(m)}_e|`.
        trajectories (Trajectories): From :func:`read_trajectories`.
        key_added (str, optional): Prefix of the keys. (default: :obj:`'staged'`)
        method (str, optional): ``'jacobian'`` or ``'attention'`` (see
            :func:`~torch_staged.interpret.edge_scores`).
            (default: :obj:`'jacobian'`)
        model_genes (list of str, optional): The genes the model was trained on,
            in order; when given, they must equal the trajectories' panel.
            (default: :obj:`None`, only the panel size is checked)
        model_cell_types (list of str, optional): The cell types the model was
            trained on, in code order; a cell type outside it raises.
            (default: :obj:`None`, only their number is checked)
        inplace (bool, optional): Write into :obj:`adata` and return
            :obj:`None`; by default a copy is written and returned.
            (default: :obj:`False`)

    Returns:
        The annotated copy of :obj:`adata`, or :obj:`None` with
        :obj:`inplace=True`.

    Example:
        >>> from torch_staged.io import read_trajectories, write_results
        >>> traj = read_trajectories(adata, lr_pairs=pairs)  # doctest: +SKIP
        >>> fit(model, traj.data)  # doctest: +SKIP
        >>> out = write_results(adata, model, traj)  # doctest: +SKIP
        >>> out.obsp['staged_signalling']  # doctest: +SKIP
    """
    # ---- validation -------------------------------------------------------------
    check_anndata(adata)
    if not isinstance(trajectories, Trajectories):
        raise TypeError(f"'trajectories' must be the Trajectories returned by "
                        f"read_trajectories() (got {type(trajectories).__name__})")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"'key_added' must be a non-empty string (got {key_added!r})")
    if method not in METHODS:
        raise ValueError(f"'method' must be one of {METHODS} (got {method!r})")
    traj = trajectories
    models = _members(model, traj, model_genes, model_cell_types)
    var_index = pd.Index([str(g) for g in adata.var_names]).get_indexer(traj.genes)
    if (var_index < 0).any():
        absent = [g for g, i in zip(traj.genes, var_index) if i < 0]
        raise ValueError(f"The gene panel differs: {len(absent)} gene(s) of the "
                         f"trajectories are not in adata.var_names, e.g. "
                         f"{absent[:10]}. Write into the AnnData the trajectories "
                         f"were read from")
    snapshot = _is_snapshot(adata, traj)
    cell, time, valid = (_snapshot_lookup if snapshot else _row_lookup)(adata, traj)
    if not valid.any():
        raise ValueError(
            f"No row of adata matches a (cell, time) of the trajectories (columns "
            f"{traj.cell_key!r}, {traj.time_key!r}): write into the AnnData the "
            f"trajectories were read from")
    if not valid.all():
        warnings.warn(
            f"{int((~valid).sum())} of {adata.n_obs} rows of adata match no (cell, "
            f"time) of the trajectories: their results are NaN (layers, obsm) or "
            f"empty (obsp)", stacklevel=2)

    # ---- compute ------------------------------------------------------------------
    param = next(models[0].parameters())
    data = traj.data if traj.data[CELL].pos.device == param.device \
        else traj.data.clone().to(param.device)
    X = traj.X_graph.to(param)  # [T, N, G], graph order
    T, N, G = X.shape
    pairs = [(str(a), str(b)) for a, b in data.lr_pairs]
    L = len(pairs)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            pred = torch.stack([m(data, traj.t.to(param), X[0]) for m in models]).mean(0)
        incoming = torch.zeros(T, N, L, dtype=param.dtype)
        outgoing = torch.zeros(T, N, L, dtype=param.dtype)
        links = []  # per time: (sender cell, receiver cell, strength), input order
        n_id = data[CELL].n_id.cpu()
        totals: list = [None] * len(models)  # per member: the sum over times
        for k in range(T):
            scores = [edge_scores(m, data, X[k], method) for m in models]
            totals = [now if total is None else {r: total[r] + now[r] for r in total}
                      for total, now in zip(totals, scores)]
            score = (_mean_abs(scores, SIGNALS)
                     if L and data[SIGNALS].num_edges else None)
            if score is None:
                links.append(None)
                continue
            score = score.cpu()
            src, dst = data[SIGNALS].edge_index.cpu() // G
            lr = data[SIGNALS].lr_pair.cpu()
            incoming[k] = _scatter_pairs(score, dst, lr, N, L)
            outgoing[k] = _scatter_pairs(score, src, lr, N, L)
            links.append((n_id[src].numpy(), n_id[dst].numpy(),
                          score.double().numpy()))
        # the tables over all times: edge_scores(m, data, X), without a second pass
        intra, inter = interaction_tables(
            models, data, scores=[{r: v / T for r, v in total.items()} for total in totals])
    finally:
        for m, mode in zip(models, was_training):
            m.train(mode)
    pred = data.cells_to_input(pred.detach().cpu(), dim=1).numpy()
    incoming = data.cells_to_input(incoming, dim=1).numpy()
    outgoing = data.cells_to_input(outgoing, dim=1).numpy()

    rows = np.flatnonzero(valid)
    layer = np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)
    layer[np.ix_(rows, var_index)] = pred[time[rows], cell[rows]]
    columns = [f'{a}^{b}' for a, b in pairs]
    obsm = {}
    for name, value in (('incoming', incoming), ('outgoing', outgoing)):
        block = np.full((adata.n_obs, L), np.nan, dtype=np.float32)
        block[rows] = value[time[rows], cell[rows]]
        obsm[name] = pd.DataFrame(block, index=adata.obs_names.copy(), columns=columns)
    signalling = _row_graph(links, cell, time, rows, adata.n_obs, N)

    params: Dict = {
        'method': method,
        'cell_key': traj.cell_key, 'time_key': traj.time_key,
        'type_key': traj.type_key,
        'library_key': traj.library_key or '',
        'libraries': np.asarray([str(b) for b in traj.libraries or []], dtype=str),
        'times': traj.t.detach().cpu().double().numpy(),
        'genes': np.asarray(traj.genes, dtype=str),
        'cell_types': np.asarray(traj.cell_types, dtype=str),
        'pred_layer': Key.layers.pred(key_added),
        'incoming_key': Key.obsm.incoming(key_added),
        'outgoing_key': Key.obsm.outgoing(key_added),
        'signalling_key': Key.obsp.signalling(key_added),
        'signalling_orientation': ORIENTATION,
        'neighbour_edges': int(data[NEAR].num_edges),
        'num_gene_nodes': int(data[GENE].num_nodes),
        'model': repr(models[0]),
        'ensemble_size': len(models),
        'model_config': json.dumps(getattr(models[0], 'config', {}), default=str,
                                   sort_keys=True),
    }
    lr_frame = pd.DataFrame({'ligand': [a for a, _ in pairs],
                             'receptor': [b for _, b in pairs],
                             'interaction': columns})

    match_table = traj.matches.reindex(adata.obs_names).copy() if snapshot else None

    # ---- write (last, so that errors leave adata untouched) --------------------------
    out = adata if inplace else adata.copy()
    out.layers[Key.layers.pred(key_added)] = layer
    out.obsm[Key.obsm.incoming(key_added)] = obsm['incoming']
    out.obsm[Key.obsm.outgoing(key_added)] = obsm['outgoing']
    out.obsp[Key.obsp.signalling(key_added)] = signalling
    out.uns[key_added] = {
        Key.uns.intracellular: intra,
        Key.uns.intercellular: inter,
        Key.uns.lr_pairs: lr_frame,
        Key.uns.params: params,
    }
    if snapshot:
        out.uns[key_added][Key.uns.matches] = match_table
    return None if inplace else out
