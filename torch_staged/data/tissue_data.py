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
        order to the graph's cell order (e.g. ``X[T, N, G]`` with ``dim=1``).
        """
        return value.index_select(dim, self[CELL].n_id.to(value.device))

    def cells_to_input(self, value: Tensor, dim: int = 0) -> Tensor:
        """Inverse of :meth:`cells_to_graph`: back to the user's cell order."""
        n_id = self[CELL].n_id.to(value.device)
        inv = torch.empty_like(n_id)
        inv[n_id] = torch.arange(n_id.numel(), device=n_id.device)
        return value.index_select(dim, inv)

    def set_trajectories(self, X: Tensor, t: Tensor, cell_order: str = 'input'
                         ) -> 'TissueData':
        r"""Stores expression trajectories on the graph, so that tiles and batches
        carry them along: ``data['gene'].traj`` ``[N*G, T]`` and ``data.t`` ``[T]``.

        Args:
            X (Tensor): ``[T, N, G]`` expression at the times :obj:`t`.
            t (Tensor): ``[T]`` strictly increasing times.
            cell_order (str, optional): ``'input'`` if the cells of :obj:`X` are in
                the order given to the builder, ``'graph'`` if in the graph's
                order. (default: :obj:`'input'`)
        """
        X = torch.as_tensor(X)
        t = torch.as_tensor(t)
        if X.dim() != 3 or X.shape[1:] != (self.num_cells, self.num_genes):
            raise ValueError(f"'X' must have shape [T, num_cells, num_genes] = "
                             f"[T, {self.num_cells}, {self.num_genes}] (got "
                             f"{list(X.shape)})")
        if t.dim() != 1 or t.numel() != X.size(0):
            raise ValueError(f"'t' must have shape [T] = [{X.size(0)}] (got "
                             f"{list(t.shape)})")
        if t.numel() < 2:
            raise ValueError("Trajectories need at least two time points")
        if not bool((t[1:] > t[:-1]).all()):
            raise ValueError(f"'t' must be strictly increasing (got {t.tolist()})")
        if not bool(torch.isfinite(X).all()):
            raise ValueError("'X' has NaN or Inf entries")
        if cell_order not in ('input', 'graph'):
            raise ValueError(f"'cell_order' must be 'input' or 'graph' "
                             f"(got '{cell_order}')")
        if cell_order == 'input':
            X = self.cells_to_graph(X, dim=1)
        self[GENE].traj = X.reshape(X.size(0), -1).t().contiguous()
        self.t = t.clone()
        return self

    def trajectories(self) -> Tensor:
        """The stored trajectories as ``[T, N, G]`` in the graph's cell order."""
        if 'traj' not in self[GENE]:
            raise ValueError("No trajectories are stored: call set_trajectories()")
        traj = self[GENE].traj
        return traj.t().reshape(traj.size(1), self.num_cells, self.num_genes)

    def edge_counts(self) -> dict:
        """Number of edges per relation, e.g. for logging."""
        return {'near': self[NEAR].num_edges, 'regulates': self[REGULATES].num_edges,
                'signals': self[SIGNALS].num_edges}

