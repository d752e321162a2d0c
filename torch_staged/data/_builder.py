"""Vectorised construction of the tissue :class:`TissueData`."""
import numbers
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from torch_staged.data._neighbors import (
    delaunay_edges,
    given_edges,
    knn_edges,
    morton_order,
    radius_edges,
)
from torch_staged.data._priors import MISSING_OPTIONS, grn_templates, lr_pair_table
from torch_staged.data.tissue_data import TissueData
from torch_staged.typing import (
    CELL,
    GENE,
    NEAR,
    REGULATES,
    SIGNALS,
    ArrayLike,
    PairTable,
)

NEIGHBOR_RULES = ('knn', 'radius', 'delaunay')


def _to_numpy(value: ArrayLike, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # pragma: no cover - numpy's own message is clear
        raise TypeError(f"'{name}' could not be converted to an array: {err}") from None


def _check_positions(pos: ArrayLike) -> np.ndarray:
    arr = _to_numpy(pos, 'pos')
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"'pos' must have shape [num_cells, 2] or [num_cells, 3] "
                         f"(got {list(arr.shape)})")
    if arr.shape[0] == 0:
        raise ValueError("'pos' holds no cells")
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"'pos' must be numeric (got dtype {arr.dtype})")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"'pos' has NaN or Inf in {bad.sum()} cell(s), e.g. rows "
                         f"{rows[:5].tolist()}: remove or impute these cells first")
    return arr


def _check_cell_types(cell_type: ArrayLike, num_cells: int,
                      cell_types: Optional[Sequence]) -> tuple:
    arr = _to_numpy(cell_type, 'cell_type').reshape(-1)
    if arr.shape[0] != num_cells:
        raise ValueError(f"'cell_type' has {arr.shape[0]} entries but 'pos' has "
                         f"{num_cells} cells: give one cell type per cell")
    if np.issubdtype(arr.dtype, np.integer) and cell_types is None:
        if arr.min() < 0:
            raise ValueError(f"Integer 'cell_type' codes must be >= 0 "
                             f"(got {int(arr.min())})")
        names = [str(i) for i in range(int(arr.max()) + 1)]
        return arr.astype(np.int64), names
    if np.issubdtype(arr.dtype, np.integer):
        names = [str(n) for n in cell_types]
        if arr.min() < 0 or arr.max() >= len(names):
            raise ValueError(f"Integer 'cell_type' codes must lie in 0..{len(names) - 1} "
                             f"for the {len(names)} given cell_types "
                             f"(got {int(arr.min())}..{int(arr.max())})")
        return arr.astype(np.int64), names
    labels = arr.astype(str)
    names = (sorted(set(labels.tolist())) if cell_types is None
             else [str(n) for n in cell_types])
    if len(set(names)) != len(names):
        raise ValueError(f"'cell_types' has duplicated names: {names}")
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(labels.tolist()) - set(lookup))
    if unknown:
        raise ValueError(f"'cell_type' has labels {unknown[:10]} that are not in "
                         f"'cell_types' {names}: add them to 'cell_types'")
    codes = np.fromiter((lookup[s] for s in labels), dtype=np.int64, count=len(labels))
    return codes, names


def _check_genes(genes: Union[Sequence[str], int]) -> list:
    if isinstance(genes, numbers.Integral):
        genes = [f'g{i}' for i in range(int(genes))]
    names = [str(g) for g in genes]
    if len(names) == 0:
        raise ValueError("'genes' is empty: give the gene panel (a list of names)")
    seen, dup = set(), []
    for g in names:
        if g in seen:
            dup.append(g)
        seen.add(g)
    if dup:
        raise ValueError(f"'genes' has {len(dup)} duplicated name(s) {dup[:10]}: "
                         f"gene names must be unique")
    return names


def _segment_arange(counts: Tensor, ptr: Tensor) -> Tensor:
    """For CSR segments of sizes ``counts``, each element's position within its
    segment: ``[0, 1, .., c0-1, 0, .., c1-1, ...]``.
    """
    total = int(ptr[-1])
    owner = torch.repeat_interleave(torch.arange(counts.numel()), counts,
                                    output_size=total)
    return torch.arange(total) - ptr[owner]


def _check_sections(batch: Optional[ArrayLike], num_cells: int) -> tuple:
    """Section codes ``[N]`` (``0..B-1``) and their labels; one section when
    :obj:`batch` is :obj:`None`.
    """
    if batch is None:
        return np.zeros(num_cells, dtype=np.int64), ['0']
    arr = _to_numpy(batch, 'batch').reshape(-1)
    if arr.shape[0] != num_cells:
        raise ValueError(f"'batch' has {arr.shape[0]} entries but 'pos' has "
                         f"{num_cells} cells: give one section per cell")
    if arr.dtype.kind == 'f' and not np.isfinite(arr).all() or (
            arr.dtype == object and pd.isna(arr).any()):
        raise ValueError("'batch' has empty (NaN / None) sections: fill them in")
    codes, names = pd.factorize(arr, sort=True)
    return codes.astype(np.int64), [str(n) for n in names]


def _cell_order(pos: np.ndarray, section: np.ndarray, reorder: bool) -> np.ndarray:
    """Cells grouped by section, each section along a Morton curve."""
    order = np.argsort(section, kind='stable')
    if not reorder:
        return order
    parts = np.split(order, np.flatnonzero(np.diff(section[order])) + 1)
    return np.concatenate([part[morton_order(pos[part])] for part in parts])


def _section_edges(pos: np.ndarray, section: np.ndarray, rule: str, k: int,
                   radius: Optional[float]):
    """Neighbour edges of every section (cells grouped by section), offset to the
    global ids: sorted by target, none between sections.
    """
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(section)) + 1,
                             [section.size]])
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:]):  # loop over sections only
        here = pos[start:stop]
        if rule == 'knn':
            src, dst, dist = knn_edges(here, int(k))
        elif rule == 'radius':
            src, dst, dist = radius_edges(here, float(radius))
        else:
            src, dst, dist = delaunay_edges(here)
        parts.append((src + start, dst + start, dist))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def build_tissue_graph(
    pos: ArrayLike,
    cell_type: ArrayLike,
    genes: Union[Sequence[str], int],
    lr_pairs: Optional[PairTable] = None,
    grn: Optional[PairTable] = None,
    *,
    neighbors: Union[str, ArrayLike] = 'knn',
    k: int = 8,
    radius: Optional[float] = None,
    max_distance: Optional[float] = None,
    autocrine: bool = False,
    cell_types: Optional[Sequence] = None,
    missing_genes: str = 'raise',
    x: Optional[ArrayLike] = None,
    reorder: bool = True,
    batch: Optional[ArrayLike] = None,
    dtype: torch.dtype = torch.float32,
) -> TissueData:
    r"""Builds the batched gene / cell graph of one tissue as a :class:`TissueData`.

    Cells are agents with a gene panel of :math:`G` genes each. The builder
    creates, fully vectorised (no Python loop over cells, genes or edges):

    * the cell neighbourhood :math:`\mathcal{N}` (``'knn'``, ``'radius'``,
      ``'delaunay'`` or a given ``[2, E_c]`` array), edges :math:`j \to i` with
      the distance as attribute;
    * intracellular edges :math:`(c, g_1) \to (c, g_2)` for every pair of the
      prior GRN of the cell's type (all ordered pairs :math:`g_1 \neq g_2`
      without a prior), :math:`E_{in} = \sum_c |\mathrm{GRN}_{\tau(c)}|`;
    * intercellular edges :math:`(j, \ell) \to (i, r)` for every neighbour pair
      :math:`j \to i` and every ligand -> receptor pair :math:`(\ell, r)`, with
      the distance and the pair id (``lr_pair``),
      :math:`E_{out} = E_c \cdot L`.

    Gene nodes are cell-major (``id = cell * G + gene``) and every gene -> gene
    edge list is sorted by target. With :obj:`reorder=True` cells are numbered
    along a Morton curve so that neighbours have nearby ids (see
    :meth:`TissueData.cells_to_graph` to map per-cell tensors).

    **Several sections.** With :obj:`batch` (the section, sample or library of
    every cell, e.g. a scverse ``library_key`` column), neighbourhoods are
    computed within each section only, so the graph is block diagonal: with
    :math:`B` sections, :math:`E_c = \sum_b E_c^{(b)}` and no ``near``,
    ``regulates`` or ``signals`` edge joins two sections. It is the same graph
    as :meth:`~torch_geometric.data.Batch.from_data_list` of the sections built
    one by one (up to the cell order). Cells are numbered section by section
    (Morton order within each), and ``data['cell'].batch`` ``[N]`` holds the
    section codes (``data.section_names`` their labels).

    Args:
        pos (array-like): Cell positions of shape ``[N, 2]`` or ``[N, 3]``.
        cell_type (array-like): ``[N]`` cell types, integer codes or labels.
        genes (list of str or int): The gene panel (names), or its size.
        lr_pairs (DataFrame, list of tuples or path, optional): Ligand -> receptor
            pairs with columns ``ligand``, ``receptor``. :obj:`None` builds no
            intercellular edges (a cell-autonomous model). (default: :obj:`None`)
        grn (DataFrame, list of tuples or path, optional): Prior GRN with columns
            ``source``, ``target`` and optionally ``cell_type`` (rows with an empty
            type apply to every type). :obj:`None` means all ordered gene pairs
            within a cell. (default: :obj:`None`)
        neighbors (str or array-like, optional): ``'knn'``, ``'radius'``,
            ``'delaunay'``, or a ``[2, E_c]`` array of (source, target) cell rows
            (e.g. from ``adata.obsp['spatial_connectivities']``).
            (default: :obj:`'knn'`)
        k (int, optional): Neighbours per cell for ``'knn'``. (default: :obj:`8`)
        radius (float, optional): Radius for ``'radius'``. (default: :obj:`None`)
        max_distance (float, optional): Drop neighbour pairs farther apart than
            this, for any rule (e.g. long Delaunay edges). (default: :obj:`None`)
        autocrine (bool, optional): Also let a cell's ligands drive its own
            receptors (distance 0). (default: :obj:`False`)
        cell_types (list, optional): All cell-type names in code order, to fix
            the order or to include types with no cells. (default: :obj:`None`,
            sorted unique labels)
        missing_genes (str, optional): What to do with prior rows naming genes
            absent from the panel: ``'raise'`` or ``'drop'`` (with a warning that
            lists them). (default: :obj:`'raise'`)
        x (array-like, optional): Expression ``[N, G]`` or ``[N, G, F]`` in the
            user's cell order, stored as ``data['gene'].x`` ``[N*G, F]``.
            (default: :obj:`None`)
        reorder (bool, optional): Number cells along a Morton curve.
            (default: :obj:`True`)
        batch (array-like, optional): ``[N]`` section of each cell (integer
            codes or labels); neighbours are found within sections only.
            (default: :obj:`None`, one tissue)
        dtype (torch.dtype, optional): Floating dtype of positions, distances
            and :obj:`x`. (default: :obj:`torch.float32`)

    Returns:
        :class:`TissueData`, with graph-level ``gene_names``, ``cell_type_names``,
        ``lr_pairs`` (list of (ligand, receptor) names in ``lr_pair`` order) and
        ``autocrine``.

    Example:
        >>> import numpy as np
        >>> from torch_staged.data import build_tissue_graph
        >>> rng = np.random.default_rng(0)
        >>> data = build_tissue_graph(rng.uniform(0, 10, (100, 2)),
        ...                           rng.integers(0, 3, 100), ['A', 'B', 'C', 'D'],
        ...                           lr_pairs=[('A', 'C'), ('B', 'D')], k=6)
        >>> data.num_cells, data.num_genes, data.edge_counts()
        (100, 4, {'near': 600, 'regulates': 1200, 'signals': 1200})
    """
    # ---- validation: everything is checked before any heavy work ------------
    pos_np = _check_positions(pos)
    num_cells, dim = pos_np.shape
    codes, type_names = _check_cell_types(cell_type, num_cells, cell_types)
    gene_names = _check_genes(genes)
    num_genes = len(gene_names)
    gene_index = {g: i for i, g in enumerate(gene_names)}
    if missing_genes not in MISSING_OPTIONS:
        raise ValueError(f"'missing_genes' must be one of {MISSING_OPTIONS} "
                         f"(got '{missing_genes}')")
    section, section_names = _check_sections(batch, num_cells)
    lr = lr_pair_table(lr_pairs, gene_index, missing_genes)
    templates = grn_templates(grn, gene_index, type_names, missing_genes)

    given_index = None
    if isinstance(neighbors, str):
        if neighbors not in NEIGHBOR_RULES:
            raise ValueError(f"'neighbors' must be one of {NEIGHBOR_RULES} or a "
                             f"[2, E] edge array (got '{neighbors}')")
        if neighbors == 'knn':
            if not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"'k' must be a positive integer (got {k!r})")
            if k >= num_cells:
                raise ValueError(f"'k' must be smaller than the number of cells "
                                 f"(got k={k} for {num_cells} cells)")
            smallest = int(np.bincount(section).min())
            if k >= smallest:
                name = section_names[int(np.argmin(np.bincount(section)))]
                raise ValueError(
                    f"'k' must be smaller than the number of cells of every "
                    f"section, but section {name!r} has {smallest} cells (k={k}): "
                    f"use a smaller 'k' or drop that section")
        if neighbors == 'radius' and (radius is None or not radius > 0):
            raise ValueError(f"neighbors='radius' needs a positive 'radius' "
                             f"(got {radius!r})")
    else:
        given_index = _to_numpy(neighbors, 'neighbors')
        if given_index.ndim != 2 or given_index.shape[0] != 2:
            raise ValueError(f"A given neighbourhood must have shape [2, num_edges] "
                             f"(got {list(given_index.shape)})")
        if given_index.size and (given_index.min() < 0
                                 or given_index.max() >= num_cells):
            raise ValueError(f"The given neighbourhood refers to cells outside "
                             f"0..{num_cells - 1}")
        across = section[given_index[0]] != section[given_index[1]]
        if across.any():
            raise ValueError(
                f"The given neighbourhood has {int(across.sum())} edge(s) between "
                f"different sections ('batch'), e.g. cells "
                f"{given_index[:, np.flatnonzero(across)[:3]].T.tolist()}: compute "
                f"neighbours within each section (squidpy: spatial_neighbors(..., "
                f"library_key=...)) or use neighbors='knn'")
    if max_distance is not None and not max_distance > 0:
        raise ValueError(f"'max_distance' must be positive (got {max_distance!r})")
    x_np = None
    if x is not None:
        x_np = _to_numpy(x, 'x')
        given_shape = list(x_np.shape)
        if x_np.ndim == 2:
            x_np = x_np[:, :, None]
        if x_np.ndim != 3 or x_np.shape[:2] != (num_cells, num_genes):
            raise ValueError(f"'x' must have shape [num_cells, num_genes] or "
                             f"[num_cells, num_genes, F] = [{num_cells}, {num_genes}"
                             f"(, F)] (got {given_shape})")
        if not np.isfinite(x_np).all():
            raise ValueError("'x' has NaN or Inf entries")

    # ---- cell order: section by section, Morton order within ----------------
    perm = _cell_order(pos_np, section, reorder)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(num_cells)
    pos_np = pos_np[perm]
    codes = codes[perm]
    section = section[perm]

    # ---- cell neighbourhood (within each section) ----------------------------
    if given_index is not None:
        c_src, c_dst, c_dist = given_edges(pos_np, inv[given_index])
    else:
        c_src, c_dst, c_dist = _section_edges(pos_np, section, neighbors, k, radius)
    if max_distance is not None:
        keep = c_dist <= max_distance
        c_src, c_dst, c_dist = c_src[keep], c_dst[keep], c_dist[keep]
    if c_src.size == 0:
        rule = neighbors if isinstance(neighbors, str) else 'given'
        raise ValueError(
            f"The '{rule}' neighbourhood graph has no edges (radius={radius}, "
            f"max_distance={max_distance}): increase 'radius' / 'max_distance' "
            f"or use neighbors='knn'")

    data = TissueData()
    data.gene_names = gene_names
    data.cell_type_names = type_names
    data.lr_pairs = list(zip(lr['ligand'].tolist(), lr['receptor'].tolist()))
    data.autocrine = bool(autocrine)

    cell_type_t = torch.from_numpy(codes)
    data[CELL].pos = torch.from_numpy(pos_np).to(dtype)
    data[CELL].cell_type = cell_type_t
    data[CELL].n_id = torch.from_numpy(perm.astype(np.int64))
    if batch is not None:
        data[CELL].batch = torch.from_numpy(section.astype(np.int64))
        data.section_names = section_names
    data[CELL].num_nodes = num_cells

    node = torch.arange(num_cells * num_genes)
    data[GENE].cell = node // num_genes
    data[GENE].gene = node % num_genes
    data[GENE].num_nodes = num_cells * num_genes
    if x_np is not None:
        x_t = torch.from_numpy(np.ascontiguousarray(x_np[perm])).to(dtype)
        data[GENE].x = x_t.reshape(num_cells * num_genes, -1)

    c_src_t = torch.from_numpy(c_src.astype(np.int64))
    c_dst_t = torch.from_numpy(c_dst.astype(np.int64))
    c_dist_t = torch.from_numpy(c_dist).to(dtype)
    data[NEAR].edge_index = torch.stack([c_src_t, c_dst_t])
    data[NEAR].edge_attr = c_dist_t.view(-1, 1)

    # ---- intracellular edges: one template per type, cell-major blocks ------
    counts = torch.tensor([len(t) for t in templates], dtype=torch.long)
    per_cell = counts[cell_type_t]
    iptr = torch.zeros(num_cells + 1, dtype=torch.long)
    torch.cumsum(per_cell, 0, out=iptr[1:])
    reg = torch.empty(2, int(iptr[-1]), dtype=torch.long)
    for t, template in enumerate(templates):  # loop over cell types only
        cells = (cell_type_t == t).nonzero().view(-1)
        if cells.numel() == 0 or len(template) == 0:
            continue
        tmpl = torch.from_numpy(template)
        slots = iptr[cells].view(-1, 1) + torch.arange(len(template)).view(1, -1)
        base = (cells * num_genes).view(-1, 1)
        reg[0, slots.view(-1)] = (base + tmpl[:, 0].view(1, -1)).view(-1)
        reg[1, slots.view(-1)] = (base + tmpl[:, 1].view(1, -1)).view(-1)
        del slots, base
    data[REGULATES].edge_index = reg

    # ---- intercellular edges: (j, ligand) -> (i, receptor) ------------------
    if autocrine:
        self_cells = torch.arange(num_cells)
        s_src = torch.cat([c_src_t, self_cells])
        s_dst = torch.cat([c_dst_t, self_cells])
        s_dist = torch.cat([c_dist_t, torch.zeros(num_cells, dtype=dtype)])
        order = torch.sort(s_dst, stable=True).indices
        s_src, s_dst, s_dist = s_src[order], s_dst[order], s_dist[order]
    else:
        s_src, s_dst, s_dist = c_src_t, c_dst_t, c_dist_t
    num_pairs = len(lr)
    lig = torch.from_numpy(lr['ligand_index'].to_numpy(np.int64))
    rec = torch.from_numpy(lr['receptor_index'].to_numpy(np.int64))
    deg = torch.bincount(s_dst, minlength=num_cells)
    cptr = torch.zeros(num_cells + 1, dtype=torch.long)
    torch.cumsum(deg, 0, out=cptr[1:])
    within = _segment_arange(deg, cptr)  # position among the target's neighbours
    # Target cell i owns the block [cptr[i] * L, cptr[i + 1] * L), laid out pair
    # by pair (pairs are sorted by receptor), so targets come out sorted.
    slots = ((cptr[s_dst] * num_pairs + within).view(-1, 1)
             + torch.arange(num_pairs).view(1, -1) * deg[s_dst].view(-1, 1))
    num_out = s_src.numel() * num_pairs
    sig = torch.empty(2, num_out, dtype=torch.long)
    slots = slots.view(-1)
    sig[0, slots] = (s_src.view(-1, 1) * num_genes + lig.view(1, -1)).view(-1)
    sig[1, slots] = (s_dst.view(-1, 1) * num_genes + rec.view(1, -1)).view(-1)
    sig_dist = torch.empty(num_out, dtype=dtype)
    sig_dist[slots] = s_dist.view(-1, 1).expand(-1, num_pairs).reshape(-1)
    lr_id = torch.empty(num_out, dtype=torch.long)
    lr_id[slots] = torch.arange(num_pairs).view(1, -1).expand(s_src.numel(), -1).reshape(-1)
    del slots
    data[SIGNALS].edge_index = sig
    data[SIGNALS].edge_attr = sig_dist.view(-1, 1)
    data[SIGNALS].lr_pair = lr_id
    return data
