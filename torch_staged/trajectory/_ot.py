"""Trajectories from spatial snapshots by optimal transport."""
import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from scipy import sparse

from torch_staged.data._neighbors import morton_order
from torch_staged.io._constants import Key
from torch_staged.io._validate import (
    check_anndata,
    check_expression,
    check_gene_panel,
    check_obs_key,
    check_spatial,
    check_two_times,
    check_unique_rows,
    expression_matrix,
    numeric_times,
)
from torch_staged.trajectory._align import TRANSFORMS, align_all

BATCH_SPLITS = ('auto', 'spatial', 'expression', 'random')


def _check_number(value, name: str, low: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < low or (low_open and value == low):
        rel = '>' if low_open else '>='
        raise ValueError(f"'{name}' must be a finite number {rel} {low} (got {value!r})")
    return float(value)


def _features(values: np.ndarray, standardize: bool, n_components: Optional[int]
              ) -> np.ndarray:
    """Standardised (per gene, over all rows) and optionally PCA-reduced
    expression. The PCA uses the ``G x G`` covariance, never an ``n_obs``-sized
    Gram matrix.
    """
    feat = values - values.mean(axis=0)
    if standardize:
        std = feat.std(axis=0)
        feat = feat / np.where(std > 0, std, 1.0)
    if n_components is not None and n_components < feat.shape[1]:
        cov = feat.T @ feat / max(feat.shape[0] - 1, 1)
        eigval, eigvec = np.linalg.eigh(cov)
        feat = feat @ eigvec[:, ::-1][:, :n_components]
    return feat


def _order_key(kind: str, pos: np.ndarray, feat: np.ndarray) -> np.ndarray:
    """A 1-D key along which matched chunks of both snapshots are cut."""
    if kind == 'spatial':
        rank = np.empty(pos.shape[0], dtype=np.int64)
        rank[morton_order(pos)] = np.arange(pos.shape[0])
        return rank.astype(np.float64)
    centred = feat - feat.mean(axis=0)
    if centred.shape[1] == 1:
        return centred[:, 0]
    _, _, vt = np.linalg.svd(centred.T @ centred)
    return centred @ vt[0]


def _minibatches(num_a: int, num_b: int, batch_size: int, kind: str,
                 key_a: Optional[np.ndarray], key_b: Optional[np.ndarray],
                 rng: np.random.Generator) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Pairs of index chunks of the two sets, at most :obj:`batch_size` per side
    (as long as both sets have at least ``ceil(max / batch_size)`` members):
    chunk ``i`` of each set is its ``i``-th quantile along the shared key (or a
    random chunk).
    """
    num = max(math.ceil(num_a / batch_size), math.ceil(num_b / batch_size), 1)
    num = min(num, num_a, num_b)
    if num == 1:
        return [(np.arange(num_a), np.arange(num_b))]
    if kind == 'random':
        order_a, order_b = rng.permutation(num_a), rng.permutation(num_b)
    else:
        order_a = np.argsort(key_a, kind='stable')
        order_b = np.argsort(key_b, kind='stable')
    return list(zip(np.array_split(order_a, num), np.array_split(order_b, num)))


def _couple(cost: np.ndarray, reg: float, max_iter: int) -> np.ndarray:
    """The optimal coupling with uniform marginals (POT): exact for ``reg = 0``,
    else entropic (log-domain Sinkhorn).
    """
    import ot
    a = np.full(cost.shape[0], 1.0 / cost.shape[0])
    b = np.full(cost.shape[1], 1.0 / cost.shape[1])
    # Row and column constants do not change the optimal plan; removing them
    # keeps a zero in every row and column, so exp(-cost / reg) never
    # underflows to an empty row.
    cost = cost - cost.min(axis=1, keepdims=True)
    cost = cost - cost.min(axis=0, keepdims=True)
    if reg == 0:
        return ot.emd(a, b, cost, numItermax=max(100000, 50 * cost.size))
    return ot.sinkhorn(a, b, cost, reg, method='sinkhorn_stabilized',
                       numItermax=max_iter, stopThr=1e-6, warn=False)


def _sections(adata, library_key: Optional[str], time: np.ndarray,
              times: np.ndarray):
    """Section codes per row ``[n]``, the time index of every section ``[B]``,
    section labels and the per-row library values. A section is a (library,
    time) pair; without a library key, every time is one section.
    """
    if library_key is None:
        libs = np.full(time.size, '', dtype=object)
        codes = time.astype(np.int64)
        names = [f't={t:g}' for t in times]
        return codes, np.arange(times.size), names, libs
    column = check_obs_key(adata, library_key, 'library_key', 'section (library) ids')
    libs = column.to_numpy()
    lib_codes, lib_names = pd.factorize(libs, sort=True)
    key = lib_codes.astype(np.int64) * times.size + time
    unique, codes = np.unique(key, return_inverse=True)
    spans = np.bincount(unique // times.size, minlength=len(lib_names))
    names = [str(lib_names[u // times.size]) if spans[u // times.size] == 1
             else f'{lib_names[u // times.size]} (t={times[u % times.size]:g})'
             for u in unique]
    return codes.reshape(-1).astype(np.int64), unique % times.size, names, libs


def _mean_sq_nn(pos: np.ndarray, section: np.ndarray) -> float:
    """Mean squared distance to the nearest other cell of the same section."""
    from scipy.spatial import cKDTree
    values = []
    for b in np.unique(section):
        here = pos[section == b]
        if here.shape[0] > 1:
            values.append(cKDTree(here).query(here, k=2)[0][:, 1] ** 2)
    value = float(np.concatenate(values).mean()) if values else 1.0
    return value if value > 0 else 1.0


def spatial_information(feat: np.ndarray, pos: np.ndarray, groups: np.ndarray,
                        section: np.ndarray, seed: int = 0) -> float:
    r"""How much closer in expression spatial neighbours are than random cells
    of the same type: :math:`r = \max(0, 1 - \bar d_{nn} / \bar d_{rand})`,
    with :math:`\bar d_{nn}` the mean squared feature distance of each cell to
    its nearest same-type cell of its section and :math:`\bar d_{rand}` the
    same to a random same-type cell. :math:`r = 0`: position says nothing about
    the state beyond the type; :math:`r \to 1`: neighbours are alike.
    """
    from scipy.spatial import cKDTree
    rng = np.random.default_rng(seed)
    near, rand = [], []
    for key in pd.unique(pd.Series(list(zip(section.tolist(), groups.tolist())))):
        idx = np.flatnonzero((section == key[0]) & (groups == key[1]))
        if idx.size < 3:
            continue
        nn = cKDTree(pos[idx]).query(pos[idx], k=2)[1][:, 1]
        near.append(((feat[idx] - feat[idx[nn]]) ** 2).sum(1))
        other = idx[(np.arange(idx.size) + rng.integers(1, idx.size, idx.size))
                    % idx.size]
        rand.append(((feat[idx] - feat[other]) ** 2).sum(1))
    if not near:
        return 0.0
    ratio = np.concatenate(near).mean() / max(np.concatenate(rand).mean(), 1e-12)
    return float(np.clip(1.0 - ratio, 0.0, 1.0))


def alignment_table(records: List[Dict], times: np.ndarray) -> pd.DataFrame:
    """One row per section: time, reference, the map ``x -> A x + c`` (flat
    columns ``A00, A01, .., c0, ..``), mirrored, costs.
    """
    rows = []
    for rec in records:
        row = dict(section=rec['section'], time=float(times[rec['time_index']]),
                   reference=rec['reference'], mirrored=rec['mirrored'],
                   fgw=float(rec['fgw']), cost=float(rec['cost']))
        A, c = np.asarray(rec['A']), np.asarray(rec['c'])
        row.update({f'A{i}{j}': float(A[i, j]) for i in range(A.shape[0])
                    for j in range(A.shape[1])})
        row.update({f'c{i}': float(c[i]) for i in range(c.size)})
        rows.append(row)
    return pd.DataFrame(rows).set_index('section')


def infer_trajectories(
    adata,
    time_key: str = Key.obs.time,
    *,
    cell_key: Optional[str] = None,
    type_key: Optional[str] = Key.obs.cell_type,
    spatial_key: str = Key.obsm.spatial,
    library_key: Optional[str] = None,
    align: Optional[str] = None,
    structure_weight: float = 0.5,
    align_samples: int = 300,
    layer: Optional[str] = None,
    genes: Optional[Sequence[str]] = None,
    alpha_spatial: Union[float, str, None] = None,
    reg: float = 0.05,
    standardize: bool = True,
    n_components: Optional[int] = None,
    match_types: bool = True,
    batch_size: int = 1024,
    batch_split: str = 'auto',
    max_iter: int = 1000,
    allow_negative: bool = False,
    seed: int = 0,
):
    r"""Turns spatial snapshots (different cells at each time) into long-format
    trajectories by optimal-transport matching of consecutive snapshots.

    The cells of the first snapshot are the **anchors**: each keeps its id,
    position and cell type, and starts from its observed expression. Going
    from :math:`t_k` to :math:`t_{k+1}`, the anchors' current states are
    coupled to the cells observed at :math:`t_{k+1}` by optimal transport with
    uniform marginals and the cost

    .. math::
        C_{aj} = \frac{\lVert z_a - z_j \rVert^2}{s} + \alpha\,
        \lVert p_a - p_j \rVert^2,

    where :math:`z` are expression features (standardised per gene and
    optionally PCA-reduced), :math:`s = 2\sum_g \mathrm{Var}(z_g)` (the mean
    squared distance between random cells, so the expression term is about 1
    between unrelated cells), :math:`p` the positions and :math:`\alpha` =
    :obj:`alpha_spatial` in inverse squared units of ``obsm[spatial_key]``.
    Each anchor's state at :math:`t_{k+1}` is the barycentric projection of its
    coupling row, :math:`x_a(t_{k+1}) = \sum_j \pi_{aj} x_j / \sum_j \pi_{aj}`
    (in expression and in feature space), and the chain goes on from there.

    Couplings come from `POT <https://pythonot.github.io>`_: ``ot.emd`` (exact,
    :obj:`reg=0`) or log-domain ``ot.sinkhorn`` (entropic, :obj:`reg > 0`, in
    units of the cost). With :obj:`match_types`, anchors are matched only to
    cells of their own type. Memory stays bounded: each (type, time step) is
    solved on matched minibatches of at most :obj:`batch_size` cells per
    snapshot, so no coupling holds more than ``batch_size ** 2`` entries (as
    long as each snapshot has at least ``ceil(n / batch_size)`` cells of the
    type). The chunks are quantiles of both sets along a shared order: a Morton
    curve of the positions (``'spatial'``), the first principal component of
    the features (``'expression'``) or random (``'random'``); ``'auto'`` is
    ``'spatial'`` when :obj:`alpha_spatial` > 0, else ``'expression'``.

    **Sections** (``library_key``; a real time course has other sections, in
    other coordinate frames, at every time, often several per time): every
    section of the first time contributes its cells as anchors, which keep
    their section (``obs[library_key]`` of the output) and their own
    coordinates, so that :func:`torch_staged.io.read_trajectories` with the
    same ``library_key`` builds one block-diagonal graph. The cells of all
    sections of a time are pooled for the coupling. With :obj:`align`
    (``'rigid'``: rotation, mirroring and shift; ``'affine'``), every section is
    first mapped into one frame by
    :func:`~torch_staged.trajectory.align_sections` (fused Gromov-Wasserstein
    on subsamples, then Procrustes), and the spatial term of the cost uses
    these aligned positions when :obj:`alpha_spatial` > 0. The spatial term
    is off by default: on the package's simulator (``benchmarks/alignment.py``,
    independent or spatially patterned initial states, low or high noise) it
    never made the trajectories closer to the truth than expression alone,
    not even in the true frames. ``alpha_spatial='auto'`` is :math:`r / h^2`:
    :math:`h^2` is the mean squared
    nearest-neighbour distance of the anchors (so the term is about :math:`r`
    one cell away) and :math:`r \in [0, 1]` measures how much position says
    about expression at the first time (:func:`spatial_information`: 0 when
    neighbours are no more alike than random cells of their type, so that
    position then does not override expression).

    **Matching.** Every observed row gets the anchor it is matched to: the
    largest entry :math:`\arg\max_a \pi_{aj}` of its column of the coupling
    (anchors to themselves), with weight :math:`\max_a \pi_{aj} / \sum_a
    \pi_{aj}`. This table (``uns['staged_trajectories']['matches']``, indexed
    by the input's ``obs_names``) is what lets
    :func:`torch_staged.io.write_results` write predictions onto every input
    row.

    Args:
        adata (anndata.AnnData): Snapshots in long format: one row per observed
            cell, ``obs[time_key]``, ``obsm[spatial_key]``. Never modified.
        time_key (str, optional): ``obs`` column of the numeric times.
            (default: :obj:`'time'`)
        cell_key (str, optional): ``obs`` column of cell ids, kept for the
            anchors (a (cell, time) pair must not repeat); :obj:`None` uses the
            anchors' ``obs_names``. (default: :obj:`None`)
        type_key (str, optional): ``obs`` column of the cell types, or
            :obj:`None` for untyped cells. (default: :obj:`'cell_type'`)
        spatial_key (str, optional): ``obsm`` key of the positions.
            (default: :obj:`'spatial'`)
        library_key (str, optional): ``obs`` column of the section (sample,
            library) of every row. (default: :obj:`None`: one section per time)
        align (str, optional): ``'rigid'`` or ``'affine'`` alignment of the
            sections before matching, or :obj:`None` (all sections share one
            frame). (default: :obj:`None`)
        structure_weight (float, optional): Weight :math:`\beta \in [0, 1)` of
            the spatial-structure term of the fused Gromov-Wasserstein
            alignment. (default: :obj:`0.5`)
        align_samples (int, optional): Cells per section in the alignment's
            couplings (memory :math:`O(\text{align\_samples}^2)`).
            (default: :obj:`300`)
        layer (str, optional): Read ``layers[layer]`` instead of ``X``.
        genes (list of str, optional): Gene panel (subset of ``var_names``).
        alpha_spatial (float or str, optional): Weight :math:`\alpha` of the
            squared spatial distance, or ``'auto'`` (see above).
            (default: :obj:`None`: ``0``, expression only)
        reg (float, optional): Entropic regularisation; ``0`` for exact EMD.
            (default: :obj:`0.05`)
        standardize (bool, optional): Standardise genes before the cost.
            (default: :obj:`True`)
        n_components (int, optional): PCA dimensions of the features.
            (default: :obj:`None`, no PCA)
        match_types (bool, optional): Match within cell types only.
            (default: :obj:`True`)
        batch_size (int, optional): Largest minibatch per snapshot.
            (default: :obj:`1024`)
        batch_split (str, optional): ``'auto'``, ``'spatial'``, ``'expression'``
            or ``'random'``. (default: :obj:`'auto'`)
        max_iter (int, optional): Sinkhorn iterations. (default: :obj:`1000`)
        allow_negative (bool, optional): Accept negative expression.
            (default: :obj:`False`)
        seed (int, optional): Seed of the random minibatches. (default: :obj:`0`)

    Returns:
        A new :class:`anndata.AnnData` with one row per (anchor, time), rows
        sorted by time then anchor: ``X`` (float32) the inferred expression of
        the panel, ``obs[cell_key or 'cell_id']``, ``obs[time_key]``,
        ``obs[type_key or 'cell_type']`` (and ``obs[library_key]``),
        ``obsm['spatial']`` (each anchor's own coordinates),
        ``obsm['spatial_aligned']`` (in the common frame) and
        ``uns['staged_trajectories']`` with the parameters, the mean transport
        cost of each step, the ``matches`` table and, with :obj:`align`, the
        ``alignment`` table (one row per section: its reference, the map
        :math:`x \mapsto A x + c`, whether it is mirrored, the costs). It goes straight into
        :func:`torch_staged.io.read_trajectories`.

    Example:
        >>> from torch_staged.sim import simulate_tissue
        >>> from torch_staged.trajectory import infer_trajectories
        >>> snaps = simulate_tissue(100, snapshot=True, seed=0)
        >>> traj = infer_trajectories(snaps, cell_key='cell_id')
        >>> traj.n_obs  # 50 anchors x 17 times
        850
    """
    import anndata as ad

    # ---- validation --------------------------------------------------------------
    check_anndata(adata)
    time_col = check_obs_key(adata, time_key, 'time_key', 'observation times')
    row_times = numeric_times(time_col, time_key)
    check_two_times(row_times, time_key)
    pos = check_spatial(adata, spatial_key)
    matrix = expression_matrix(adata, layer)
    panel, columns = check_gene_panel(adata, genes)
    if align is not None and align not in TRANSFORMS:
        raise ValueError(f"'align' must be one of {TRANSFORMS} or None (got {align!r})")
    if alpha_spatial is None:
        alpha_spatial = 0.0
    if alpha_spatial != 'auto':
        alpha_spatial = _check_number(alpha_spatial, 'alpha_spatial', 0.0)
    structure_weight = _check_number(structure_weight, 'structure_weight', 0.0)
    if structure_weight >= 1:
        raise ValueError(f"'structure_weight' must be in [0, 1) (got "
                         f"{structure_weight!r}): 1 would ignore expression")
    if isinstance(align_samples, bool) or not isinstance(align_samples, numbers.Integral) \
            or align_samples < 3:
        raise ValueError(f"'align_samples' must be an integer >= 3 (got "
                         f"{align_samples!r})")
    reg = _check_number(reg, 'reg', 0.0)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 2:
        raise ValueError(f"'batch_size' must be an integer >= 2 (got {batch_size!r})")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) \
            or max_iter < 1:
        raise ValueError(f"'max_iter' must be a positive integer (got {max_iter!r})")
    if batch_split not in BATCH_SPLITS:
        raise ValueError(f"'batch_split' must be one of {BATCH_SPLITS} (got "
                         f"{batch_split!r})")
    if n_components is not None and (
            isinstance(n_components, bool) or not isinstance(n_components, numbers.Integral)
            or not 1 <= n_components <= len(panel)):
        raise ValueError(f"'n_components' must be an integer in 1..{len(panel)} (the "
                         f"panel size) or None (got {n_components!r})")
    times, time = np.unique(row_times, return_inverse=True)
    time = time.reshape(-1)
    section, section_time, section_names, libs = _sections(adata, library_key, time,
                                                           times)
    if cell_key is not None:
        cell_col = check_obs_key(adata, cell_key, 'cell_key', 'cell ids')
        codes, uniques = pd.factorize(cell_col.astype(str), sort=True)
        check_unique_rows(codes.astype(np.int64), time, len(uniques), list(uniques),
                          times, cell_key, time_key)
        ids = cell_col.to_numpy()
    else:
        ids = adata.obs_names.to_numpy()
    if type_key is not None:
        type_col = check_obs_key(adata, type_key, 'type_key', 'cell types')
        labels = type_col.astype(str).to_numpy()
        categories = ([str(c) for c in type_col.cat.categories]
                      if isinstance(type_col.dtype, pd.CategoricalDtype)
                      else sorted(set(labels.tolist())))
    else:
        labels = np.full(adata.n_obs, 'all', dtype=object)
        categories = ['all']
    check_expression(matrix, columns,
                     'adata.X' if layer is None else f'adata.layers[{layer!r}]',
                     allow_negative)
    groups = np.asarray(labels) if (match_types and type_key is not None) \
        else np.zeros(adata.n_obs, dtype=np.int64)
    anchors = np.flatnonzero(time == 0)
    for k in range(1, times.size):
        here = set(groups[time == k].tolist())
        lost = sorted({str(g) for g in set(groups[anchors].tolist()) - here})
        if lost:
            raise ValueError(
                f"Cell type(s) {lost} have cells at the first time {times[0]:g} but "
                f"none at time {times[k]:g}, so their anchors cannot be matched "
                f"within their type: pass match_types=False, or drop these cells")

    # ---- features ------------------------------------------------------------------
    values = matrix if columns is None else matrix[:, columns]
    values = values.toarray() if sparse.issparse(values) else np.asarray(values)
    values = values.astype(np.float64)
    feat = _features(values, standardize, n_components)
    scale = 2.0 * float(feat.var(axis=0).sum())
    scale = scale if scale > 0 else 1.0
    rng = np.random.default_rng(seed)
    records = None
    aligned = pos
    if align is not None:
        aligned, records = align_all(
            pos, feat, np.asarray(labels) if type_key is not None else None, section,
            section_time, section_names, scale=scale, transform=align,
            structure_weight=structure_weight, num_samples=int(align_samples),
            seed=seed)
    spatial_info = spatial_information(feat[anchors], pos[anchors],
                                       np.asarray(groups)[anchors], section[anchors],
                                       seed)
    if alpha_spatial == 'auto':
        alpha_spatial = spatial_info / _mean_sq_nn(aligned[anchors], section[anchors])
    if batch_split == 'auto':
        batch_split = 'spatial' if alpha_spatial > 0 else 'expression'

    # ---- chain of couplings ----------------------------------------------------------
    num_anchors = anchors.size
    state_x = values[anchors].copy()
    state_z = feat[anchors].copy()
    anchor_pos = aligned[anchors]
    match_anchor = np.full(adata.n_obs, -1, dtype=np.int64)
    match_weight = np.zeros(adata.n_obs)
    match_anchor[anchors] = np.arange(anchors.size)
    match_weight[anchors] = 1.0
    out_x = np.empty((times.size, num_anchors, len(panel)))
    out_x[0] = state_x
    step_cost = np.zeros(times.size - 1)
    largest = 0
    for k in range(1, times.size):
        rows = np.flatnonzero(time == k)
        new_x, new_z = np.empty_like(state_x), np.empty_like(state_z)
        total = 0.0
        for group in pd.unique(groups[anchors]):
            ia = np.flatnonzero(groups[anchors] == group)
            jb = rows[groups[rows] == group]
            key_a = key_b = None
            if batch_split != 'random':
                key = _order_key(batch_split, np.concatenate([anchor_pos[ia], pos[jb]]),
                                 np.concatenate([state_z[ia], feat[jb]]))
                key_a, key_b = key[:ia.size], key[ia.size:]
            for ca, cb in _minibatches(ia.size, jb.size, int(batch_size), batch_split,
                                       key_a, key_b, rng):
                a_idx, b_idx = ia[ca], jb[cb]
                za, zb = state_z[a_idx], feat[b_idx]
                cost = ((za * za).sum(1)[:, None] + (zb * zb).sum(1)[None, :]
                        - 2.0 * za @ zb.T) / scale
                if alpha_spatial > 0:
                    pa, pb = anchor_pos[a_idx], aligned[b_idx]
                    cost = cost + alpha_spatial * (
                        (pa * pa).sum(1)[:, None] + (pb * pb).sum(1)[None, :]
                        - 2.0 * pa @ pb.T)
                cost = np.maximum(cost, 0.0)
                plan = _couple(cost, reg, int(max_iter))
                largest = max(largest, plan.size)
                mass = plan.sum(axis=1, keepdims=True)
                if not np.isfinite(plan).all() or (mass <= 0).any():
                    raise RuntimeError(
                        f"Optimal transport failed between times {times[k - 1]:g} and "
                        f"{times[k]:g} (degenerate coupling): increase 'reg', or use "
                        f"reg=0 for exact transport")
                weights = plan / mass
                column = plan.sum(axis=0)
                best = plan.argmax(axis=0)
                match_anchor[b_idx] = a_idx[best]
                match_weight[b_idx] = plan[best, np.arange(b_idx.size)] / np.where(
                    column > 0, column, 1.0)
                new_x[a_idx] = weights @ values[b_idx]
                new_z[a_idx] = weights @ feat[b_idx]
                total += float((plan * cost).sum()) * a_idx.size
        state_x, state_z = new_x, new_z
        out_x[k] = state_x
        step_cost[k - 1] = total / num_anchors

    # ---- long-format output -------------------------------------------------------------
    T = times.size
    anchor_ids = ids[anchors]
    out_cell_key = cell_key or Key.obs.cell
    out_type_key = type_key or Key.obs.cell_type
    anchor_labels = np.asarray(labels)[anchors]
    obs = {out_cell_key: np.tile(anchor_ids, T),
           time_key: np.repeat(times, num_anchors)}
    names = [str(c) for c in anchor_ids]
    if library_key is not None:
        obs[library_key] = np.tile(libs[anchors], T)
        names = [f'{b}_{c}' for b, c in zip(libs[anchors], anchor_ids)]
    obs[out_type_key] = pd.Categorical(
        np.tile(anchor_labels, T),
        categories=[c for c in categories if c in set(anchor_labels.tolist())])
    obs = pd.DataFrame(obs, index=[f'{c}_t{k}' for k in range(T) for c in names])
    var = adata.var.iloc[columns].copy() if columns is not None else adata.var.copy()
    matches = pd.DataFrame({
        'time': times[time],
        'anchor': match_anchor,
        'anchor_cell': ids[anchors][match_anchor],
        'weight': match_weight,
    }, index=adata.obs_names.copy())
    if library_key is not None:
        matches['anchor_library'] = libs[anchors][match_anchor]
    params: Dict = dict(
        time_key=time_key, cell_key=out_cell_key, type_key=out_type_key,
        spatial_key=spatial_key, layer=layer or '', library_key=library_key or '',
        align=align or '', structure_weight=structure_weight,
        alpha_spatial=alpha_spatial, spatial_information=spatial_info,
        reg=reg, solver='emd' if reg == 0 else 'sinkhorn_log',
        standardize=bool(standardize), n_components=int(n_components or 0),
        match_types=bool(match_types), batch_size=int(batch_size),
        batch_split=batch_split, anchor_time=float(times[0]),
        num_anchors=int(num_anchors), cost_scale=scale,
        largest_coupling=int(largest), transport_cost=step_cost, seed=int(seed))
    params[Key.uns.matches] = matches
    if records is not None:
        params[Key.uns.alignment] = alignment_table(records, times)
    return ad.AnnData(
        X=out_x.reshape(T * num_anchors, len(panel)).astype(np.float32),
        obs=obs, var=var,
        obsm={Key.obsm.spatial: np.tile(pos[anchors], (T, 1)),
              Key.obsm.aligned: np.tile(anchor_pos, (T, 1))},
        uns={Key.uns.trajectory: params})
