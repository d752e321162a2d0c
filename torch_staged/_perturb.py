"""In-silico perturbation of a fitted STAGED model."""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from torch_staged.data.tissue_data import TissueData
from torch_staged.interpret._tables import check_ensemble, ensemble_members
from torch_staged.typing import CELL, GENE, SIGNALS

GeneSpec = Union[str, Sequence[str]]


@dataclass
class PerturbationResult:
    r"""Trajectories with and without a perturbation, ``[T, N, G]`` each, in the
    graph's cell order (see :meth:`TissueData.cells_to_input`).
    """
    baseline: Tensor
    perturbed: Tensor
    t: Tensor
    description: str

    @property
    def delta(self) -> Tensor:
        """``perturbed - baseline``."""
        return self.perturbed - self.baseline

    def to_layers(self, adata, trajectories, key_added: str = 'staged',
                  inplace: bool = False):
        r"""Writes the trajectories into long-format AnnData as layers.

        Rows are matched by (cell, time) through :obj:`trajectories` (the
        :class:`~torch_staged.io.Trajectories` the tissue was read with; the
        result's times must be its observed times):

        * ``layers[f'{key}_perturbed']``, ``layers[f'{key}_baseline']`` and
          ``layers[f'{key}_delta']`` ``[n_obs, n_vars]`` (float32), NaN for genes
          outside the panel and for rows that match no (cell, time);
        * ``uns[f'{key}_perturbation']``: the description and the layer names.

        Args:
            adata (anndata.AnnData): Long-format data with the rows of
                :obj:`trajectories`.
            trajectories (Trajectories): From
                :func:`~torch_staged.io.read_trajectories`.
            key_added (str, optional): Prefix of the keys.
                (default: :obj:`'staged'`)
            inplace (bool, optional): Write into :obj:`adata` and return
                :obj:`None`; by default a copy is written and returned.
        """
        from torch_staged.io._write import _row_lookup
        traj = trajectories
        data = traj.data
        if self.baseline.shape[1:] != (data.num_cells, data.num_genes):
            raise ValueError(f"The result has {self.baseline.shape[1]} cells x "
                             f"{self.baseline.shape[2]} genes but the trajectories "
                             f"{data.num_cells} x {data.num_genes}")
        t = self.t.detach().cpu().double()
        ref = traj.t.detach().cpu().double()
        if t.numel() != ref.numel() or not torch.allclose(t, ref, rtol=1e-5,
                                                          atol=1e-6):
            raise ValueError("to_layers() needs the result at the trajectories' "
                             "observed times (perturb(..., t=trajectories.t))")
        import pandas as pd
        var_index = pd.Index([str(g) for g in adata.var_names]).get_indexer(
            [str(g) for g in traj.genes])
        if (var_index < 0).any():
            absent = [g for g, i in zip(traj.genes, var_index) if i < 0]
            raise ValueError(f"{len(absent)} gene(s) of the panel are not in "
                             f"adata.var_names, e.g. {absent[:10]}")
        cell, time, valid = _row_lookup(adata, traj)
        rows = np.flatnonzero(valid)
        layers = {}
        for name, value in (('perturbed', self.perturbed), ('baseline', self.baseline),
                            ('delta', self.delta)):
            value = data.cells_to_input(value.detach().cpu().float(), dim=1).numpy()
            layer = np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)
            layer[np.ix_(rows, var_index)] = value[time[rows], cell[rows]]
            layers[f'{key_added}_{name}'] = layer
        out = adata if inplace else adata.copy()
        out.layers.update(layers)
        out.uns[f'{key_added}_perturbation'] = {
            'description': self.description,
            'layers': np.asarray(list(layers), dtype=str),
            'times': t.numpy(),
        }
        return None if inplace else out

    def __repr__(self) -> str:
        T, N, G = self.baseline.shape
        return (f'PerturbationResult({self.description}; T={T}, cells={N}, genes={G}, '
                f'max |delta|={float(self.delta.abs().max()):.3g})')


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _cell_mask(data: TissueData, cells, cell_types) -> Tensor:
    """Selected cells (graph order) from user rows and/or type names."""
    num_cells = data.num_cells
    if cells is None and cell_types is None:
        return torch.ones(num_cells, dtype=torch.bool)
    mask = torch.zeros(num_cells, dtype=torch.bool)
    if cells is not None:
        rows = torch.as_tensor(np.asarray(cells))
        if rows.dtype == torch.bool:
            if rows.numel() != num_cells:
                raise ValueError(f"A boolean 'cells' mask needs {num_cells} entries "
                                 f"(got {rows.numel()})")
            rows = rows.nonzero().view(-1)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_cells):
            raise ValueError(f"'cells' must be rows 0..{num_cells - 1} of your input "
                             f"order")
        inv = torch.empty_like(data[CELL].n_id)
        inv[data[CELL].n_id] = torch.arange(num_cells)
        mask[inv[rows.long()]] = True
    if cell_types is not None:
        names = list(data.cell_type_names)
        wanted = _as_list(cell_types)
        unknown = [str(c) for c in wanted if str(c) not in names]
        if unknown:
            raise ValueError(f"Unknown cell type(s) {unknown}; the tissue has {names}")
        codes = torch.tensor([names.index(str(c)) for c in wanted])
        type_mask = torch.isin(data[CELL].cell_type.cpu(), codes)
        mask = type_mask if cells is None else mask & type_mask
    return mask


def _gene_ids(data: TissueData, genes: Sequence[str], what: str) -> list:
    names = list(data.gene_names)
    unknown = [g for g in genes if g not in names]
    if unknown:
        raise ValueError(f"{what}: gene(s) {unknown} are not in the gene panel "
                         f"({len(names)} genes, e.g. {names[:5]})")
    return [names.index(g) for g in genes]


def perturb(
    model,
    data: TissueData,
    x0: Tensor,
    t: Tensor,
    *,
    knockout: Optional[GeneSpec] = None,
    overexpress: Optional[Dict[str, float]] = None,
    cells=None,
    cell_types: Optional[Union[str, Sequence[str]]] = None,
    lr_pairs: Optional[Sequence[Tuple[str, str]]] = None,
    remove_senders: Optional[Union[str, Sequence[str]]] = None,
) -> PerturbationResult:
    r"""Simulates a fitted model with and without an in-silico perturbation.

    Perturbations (combinable), applied to the selected cells (:obj:`cells`
    rows in your input order, and/or :obj:`cell_types`; all cells by default):

    * :obj:`knockout`: genes clamped to 0 for the whole solve (ligands,
      receptors, transcription factors alike);
    * :obj:`overexpress`: ``{gene: value}`` clamped to a constant;
    * :obj:`lr_pairs`: ligand -> receptor pairs whose signalling *into* the
      selected cells is removed (their edges are dropped);
    * :obj:`remove_senders`: cell types whose signalling to every other cell
      is removed (the cells stay, their ligands reach nobody).

    A clamped gene node keeps its value (its derivative is 0) and its neighbours
    see that value, so a knocked-out ligand stops driving the receivers'
    receptors.

    An ensemble (a list of models fitted to the same tissue, see
    :func:`~torch_staged.interpret.interaction_tables`) gives the members'
    mean baseline and mean perturbed trajectories.

    Args:
        model (STAGED or list of STAGED): A fitted model, or an ensemble.
        data (TissueData): The tissue.
        x0 (Tensor): ``[N, G]`` initial expression (graph cell order).
        t (Tensor): ``[T]`` output times.
        knockout (str or list, optional): Genes clamped to 0.
        overexpress (dict, optional): ``{gene: value}`` clamped to a constant.
        cells (array-like, optional): Rows (your input order) or a boolean mask
            of the cells to perturb.
        cell_types (str or list, optional): Cell types to perturb.
        lr_pairs (list of tuples, optional): Ligand -> receptor pairs removed
            into the selected cells.
        remove_senders (str or list, optional): Cell types whose signalling is
            removed.

    Returns:
        :class:`PerturbationResult` with the baseline and perturbed trajectories.
    """
    models = ensemble_members(model)
    if len(models) > 1:
        check_ensemble(models, data)
        options = dict(knockout=knockout, overexpress=overexpress, cells=cells,
                       cell_types=cell_types, remove_senders=remove_senders,
                       lr_pairs=None if lr_pairs is None else [tuple(p) for p in lr_pairs])
        results = [perturb(m, data, x0, t, **options) for m in models]
        return PerturbationResult(
            torch.stack([r.baseline for r in results]).mean(0),
            torch.stack([r.perturbed for r in results]).mean(0), results[0].t,
            f'{results[0].description} (mean of an ensemble of {len(models)} models)')
    model = models[0]
    knockout = _as_list(knockout)
    overexpress = dict(overexpress or {})
    if not (knockout or overexpress or lr_pairs or remove_senders):
        raise ValueError("Nothing to perturb: give knockout=, overexpress=, "
                         "lr_pairs= or remove_senders=")
    if x0.shape != (data.num_cells, data.num_genes):
        raise ValueError(f"'x0' must have shape [{data.num_cells}, {data.num_genes}] "
                         f"(got {list(x0.shape)})")
    selected = _cell_mask(data, cells, cell_types)
    G = data.num_genes
    device = model.func.decay.device
    t = t.to(device=device, dtype=model.func.decay.dtype)
    parts = []

    graph = data
    if lr_pairs or remove_senders:
        keep = torch.ones(data[SIGNALS].num_edges, dtype=torch.bool)
        src, dst = data[SIGNALS].edge_index.cpu()
        if lr_pairs:
            known = {tuple(p): i for i, p in enumerate(data.lr_pairs)}
            missing = [tuple(p) for p in lr_pairs if tuple(p) not in known]
            if missing:
                raise ValueError(f"Ligand -> receptor pair(s) {missing} are not in the "
                                 f"tissue's table {list(known)[:5]}...")
            ids = torch.tensor([known[tuple(p)] for p in lr_pairs])
            hit = torch.isin(data[SIGNALS].lr_pair.cpu(), ids) & selected[dst // G]
            keep &= ~hit
            parts.append(f'pairs {list(lr_pairs)} removed')
        if remove_senders:
            senders = _cell_mask(data, None, remove_senders)
            keep &= ~senders[src // G]
            parts.append(f'senders {_as_list(remove_senders)} silenced')
        graph = data.clone()
        for key in ('edge_index', 'edge_attr', 'lr_pair'):
            if key in data[SIGNALS]:
                value = data[SIGNALS][key]
                graph[SIGNALS][key] = value[..., keep] if key == 'edge_index' \
                    else value[keep]

    clamp_value = {}
    for gene in _gene_ids(data, knockout, 'knockout'):
        clamp_value[gene] = 0.0
    if knockout:
        parts.append(f'knockout {knockout}')
    for gene, value in zip(_gene_ids(data, list(overexpress), 'overexpress'),
                           overexpress.values()):
        clamp_value[gene] = float(value)
    if overexpress:
        parts.append(f'overexpress {overexpress}')

    with torch.no_grad():
        x0 = x0.to(device=device, dtype=t.dtype)
        baseline = model(data, t, x0)
        func = model.func.set_graph(graph)
        state = model.initial_state(graph, x0)
        if clamp_value:
            node_cell = graph[GENE].cell.to(device)
            node_gene = graph[GENE].gene.to(device)
            mask = torch.zeros(state.size(0), dtype=torch.bool, device=device)
            values = state.clone()
            for gene, value in clamp_value.items():
                hit = (node_gene == gene) & selected.to(device)[node_cell]
                mask |= hit
                values[hit, 0] = value
            state = torch.where(mask.view(-1, 1), values, state)
            func.set_clamp(mask, t[[0, -1]] if t.numel() > 1 else t.repeat(2),
                           values.unsqueeze(0).expand(2, -1, -1))
        out = model.integrate(state, t)
        func.set_clamp(None)
    perturbed = out[..., 0].reshape(t.numel(), data.num_cells, G)
    where = (f' in {int(selected.sum())} cells'
             if cells is not None or cell_types is not None else '')
    return PerturbationResult(baseline, perturbed, t, '; '.join(parts) + where)
