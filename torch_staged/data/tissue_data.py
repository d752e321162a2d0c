from typing import Any, Optional

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.data.storage import NodeStorage

from torch_staged.typing import CELL, GENE, NEAR, REGULATES, SIGNALS


class TissueData(HeteroData):
    r"""A tissue as one :class:`~torch_geometric.data.HeteroData`.

    Created by :func:`torch_staged.data.build_tissue_graph`. The layout is the
    one of ``DESIGN.md`` section 2:

    ========================================  ===============  ==============================
    key                                       shape            meaning
    ========================================  ===============  ==============================
    ``data['cell'].pos``                      ``[N, D]``       spatial coordinates
    ``data['cell'].cell_type``                ``[N]``          cell type in ``0..K-1``
    ``data['cell'].n_id``                     ``[N]``          the user's row of each cell
    ``data['gene'].cell``                     ``[N*G]``        owning cell of a gene node
    ``data['gene'].gene``                     ``[N*G]``        gene index of a gene node
    ``data['gene'].x``                        ``[N*G, F]``     gene-node state (optional)
    ``data['cell', 'near', 'cell']``          ``[2, E_c]``     neighbours ``j -> i``, distance
    ``data['gene', 'regulates', 'gene']``     ``[2, E_in]``    intracellular prior edges
    ``data['gene', 'signals', 'gene']``       ``[2, E_out]``   ligand -> receptor edges,
                                                               distance and ``lr_pair``
    ========================================  ===============  ==============================

    Gene node ids are cell-major (``id = cell * G + gene``), so a state
    ``[N*G, F]`` reshapes to ``[N, G, F]``. Cells are stored in the order chosen
    by the builder (a Morton curve by default, for memory locality);
    :meth:`cells_to_graph` and :meth:`cells_to_input` move any per-cell tensor
    between the user's row order and the graph's order.

    Compared with :class:`~torch_geometric.data.HeteroData` it only changes
    how :obj:`data['gene'].cell` is shifted when tissues are batched with
    :meth:`torch_geometric.data.Batch.from_data_list`: by the number of cells
    of the preceding tissues.
    """

    def __inc__(self, key: str, value: Any, store: Optional[Any] = None, *args,
                **kwargs) -> Any:
        if (key == 'cell' and isinstance(store, NodeStorage)
                and store._key == GENE):
            return self[CELL].num_nodes
        return super().__inc__(key, value, store, *args, **kwargs)

    # Convenience accessors ###################################################

    @property
    def num_cells(self) -> int:
        """The number of cells :math:`N`."""
        return int(self[CELL].num_nodes)

    @property
    def num_genes(self) -> int:
        """The size :math:`G` of the gene panel."""
        return int(self[GENE].num_nodes) // max(self.num_cells, 1)

    @property
    def num_cell_types(self) -> int:
        """The number :math:`K` of cell types (including types with no cells)."""
        names = self.get('cell_type_names', None)
        if names is not None and not isinstance(names[0], (list, tuple)):
            return len(names)
        return int(self[CELL].cell_type.max()) + 1

    @property
    def gene_cell_type(self) -> Tensor:
        """The cell type of the cell owning each gene node, shape ``[N*G]``."""
        return self[CELL].cell_type[self[GENE].cell]

    def cells_to_graph(self, value: Tensor, dim: int = 0) -> Tensor:
        """Reorders dimension :obj:`dim` of :obj:`value` from the user's cell
        order to the graph's cell order (e.g. ``X[T, N, G]`` with ``dim=1``)."""
        return value.index_select(dim, self[CELL].n_id.to(value.device))

    def cells_to_input(self, value: Tensor, dim: int = 0) -> Tensor:
        """Inverse of :meth:`cells_to_graph`: back to the user's cell order."""
        n_id = self[CELL].n_id.to(value.device)
        inv = torch.empty_like(n_id)
        inv[n_id] = torch.arange(n_id.numel(), device=n_id.device)
        return value.index_select(dim, inv)

    def edge_counts(self) -> dict:
        """Number of edges per relation, e.g. for logging."""
        return {'near': self[NEAR].num_edges, 'regulates': self[REGULATES].num_edges,
                'signals': self[SIGNALS].num_edges}

