"""Spatial tiles with a halo of neighbour cells, for large tissues."""
from typing import List

import torch
from torch import Tensor

from torch_staged.data.tissue_data import TissueData
from torch_staged.typing import CELL, GENE, NEAR, REGULATES, SIGNALS

_GLOBAL_KEYS = ('gene_names', 'cell_type_names', 'lr_pairs', 'autocrine', 't',
                'section_names')


def _csr(owner: Tensor, num: int) -> Tensor:
    ptr = torch.zeros(num + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(owner, minlength=num), 0, out=ptr[1:])
    return ptr


def _ranges(ptr: Tensor, rows: Tensor) -> Tensor:
    """Concatenated ``arange(ptr[r], ptr[r + 1])`` for every row ``r``."""
    start, count = ptr[rows], ptr[rows + 1] - ptr[rows]
    total = int(count.sum())
    offset = torch.repeat_interleave(start - torch.cumsum(count, 0) + count, count,
                                     output_size=total)
    return offset + torch.arange(total)


def tile(data: TissueData, tile_size: float, halo: int = 1,
         min_cells: int = 1) -> List[TissueData]:
    r"""Cuts a tissue into square spatial tiles plus a halo of neighbour cells.

    Each tile holds its *interior* cells (those whose position falls in the
    tile's square of side :obj:`tile_size`) and the cells within :obj:`halo`
    neighbourhood hops of them. Gene -> gene edges are kept into every cell
    except the outermost hop, which is *clamped*: during a tile's solve its cells
    follow their observed (interpolated) trajectories
    (:meth:`~torch_staged.nn.STAGEDODEFunc.set_clamp`), and only interior cells
    enter the loss. One :class:`~torch_staged.nn.STAGEDConv` layer reaches one
    hop, so with :obj:`halo=1` the interior's right-hand side equals the full
    tissue's exactly for the same state.

    A tissue of several sections (``data['cell'].batch``, see
    :func:`~torch_staged.data.build_tissue_graph`) is tiled section by section:
    a tile never holds the interior cells of two sections, even when their
    coordinates overlap.

    A tile's cost depends only on its own cells and edges (index look-ups use
    CSR pointers and binary search, never an array over the whole tissue per
    tile), and tiles are the unit of data parallelism.

    Args:
        data (TissueData): The full tissue.
        tile_size (float): Side of the square tiles, in position units.
        halo (int, optional): Neighbourhood hops of halo cells. (default: :obj:`1`)
        min_cells (int, optional): Drop tiles with fewer interior cells.
            (default: :obj:`1`)

    Returns:
        A list of :class:`TissueData`, each with ``data['cell'].interior`` and
        ``data['cell'].clamped`` masks and ``data['cell'].parent_id`` (the cell's
        id in the full tissue); node-level gene attributes (``x``, ``traj``) are
        sliced along.
    """
    if not tile_size > 0:
        raise ValueError(f"'tile_size' must be positive (got {tile_size!r})")
    if not isinstance(halo, int) or halo < 1:
        raise ValueError(f"'halo' must be an integer >= 1 (got {halo!r})")
    num_cells, num_genes = data.num_cells, data.num_genes
    pos = data[CELL].pos
    grid = torch.floor((pos - pos.min(0).values) / tile_size).long()
    key = data[CELL].batch.long() if 'batch' in data[CELL] else torch.zeros_like(
        grid[:, 0])
    for d in range(grid.size(1)):
        key = key * (int(grid[:, d].max()) + 1) + grid[:, d]
    order = torch.sort(key, stable=True)
    tile_keys, counts = torch.unique_consecutive(order.values, return_counts=True)

    near = data[NEAR].edge_index
    near_ptr = _csr(near[1], num_cells)  # near edges are sorted by target
    reg, sig = data[REGULATES].edge_index, data[SIGNALS].edge_index
    reg_ptr = _csr(torch.div(reg[1], num_genes, rounding_mode='floor'), num_cells)
    sig_ptr = _csr(torch.div(sig[1], num_genes, rounding_mode='floor'), num_cells)
    gene_keys = [k for k in data[GENE].keys() if k not in ('cell', 'gene')]
    genes = torch.arange(num_genes)

    tiles, start = [], 0
    for count in counts.tolist():  # loop over tiles
        interior = torch.sort(order.indices[start:start + count]).values
        start += count
        if count < min_cells:
            continue
        cells, inner = interior, interior
        for hop in range(halo):
            incoming = near[0, _ranges(near_ptr, cells)]
            grown = torch.unique(torch.cat([cells, incoming]))
            if hop < halo - 1:
                inner = grown
            cells = grown
        core = inner if halo > 1 else interior

        def relabel(ids: Tensor, cells: Tensor = cells) -> Tensor:
            return torch.searchsorted(cells, ids)

        def relabel_nodes(ids: Tensor, cells: Tensor = cells) -> Tensor:
            cell = torch.div(ids, num_genes, rounding_mode='floor')
            return torch.searchsorted(cells, cell) * num_genes + ids % num_genes

        sub = TissueData()
        for k in _GLOBAL_KEYS:
            if k in data:
                sub[k] = data[k]
        n = cells.numel()
        for k, v in data[CELL].items():
            if isinstance(v, Tensor) and v.size(0) == num_cells and k != 'batch':
                sub[CELL][k] = v[cells]
        sub[CELL].num_nodes = n
        sub[CELL].parent_id = cells
        sub[CELL].interior = torch.isin(cells, interior)
        sub[CELL].clamped = ~torch.isin(cells, core)
        node_ids = (cells.view(-1, 1) * num_genes + genes).view(-1)
        sub[GENE].cell = torch.arange(n).repeat_interleave(num_genes)
        sub[GENE].gene = genes.repeat(n)
        sub[GENE].num_nodes = n * num_genes
        for k in gene_keys:
            v = data[GENE][k]
            if isinstance(v, Tensor) and v.size(0) == data[GENE].num_nodes:
                sub[GENE][k] = v[node_ids]

        e_near = _ranges(near_ptr, core)
        sub[NEAR].edge_index = relabel(near[:, e_near])
        sub[NEAR].edge_attr = data[NEAR].edge_attr[e_near]
        e_reg = _ranges(reg_ptr, core)
        sub[REGULATES].edge_index = relabel_nodes(reg[:, e_reg])
        e_sig = _ranges(sig_ptr, core)
        sub[SIGNALS].edge_index = relabel_nodes(sig[:, e_sig])
        for k in ('edge_attr', 'lr_pair'):
            if k in data[SIGNALS]:
                sub[SIGNALS][k] = data[SIGNALS][k][e_sig]
        tiles.append(sub)
    return tiles
