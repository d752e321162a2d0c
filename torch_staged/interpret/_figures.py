"""Figures of learned interactions and perturbation responses (matplotlib, PNG)."""
import os
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from torch_staged.typing import CELL, SIGNALS


def _plt():
    from torch_staged.plot._plots import _plt as plt
    return plt()


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def signalling_heatmaps(intercellular: pd.DataFrame, cell_types: Optional[Sequence[str]]
                        = None, score: str = 'abs_score', top: int = 6,
                        path: Optional[Union[str, os.PathLike]] = None):
    r"""Learned intercellular strengths as sender type x receiver type heatmaps,
    one panel per ligand -> receptor pair (the :obj:`top` strongest pairs by
    their largest :obj:`score`), on one colour scale.

    Args:
        intercellular (DataFrame): The intercellular table of
            :func:`~torch_staged.interpret.interaction_tables`.
        cell_types (list of str, optional): Axis order (default: sorted types).
        score (str, optional): Column to show. (default: :obj:`'abs_score'`)
        top (int, optional): Number of pairs shown. (default: :obj:`6`)
        path (str, optional): Where to save the PNG.
    """
    plt = _plt()
    table = intercellular
    if cell_types is None:
        cell_types = sorted(set(table['sender_type']) | set(table['receiver_type']))
    cell_types = [str(c) for c in cell_types]
    if len(table):
        strength = table.groupby(['ligand', 'receptor'], sort=False)[score].apply(
            lambda s: s.abs().max()).sort_values(ascending=False)
        pairs = list(strength.index[:max(int(top), 1)])
    else:
        pairs = []
    vmax = float(table[score].abs().max()) if len(table) else 1.0
    fig, axes = plt.subplots(1, max(len(pairs), 1), squeeze=False,
                             figsize=(2.6 * max(len(pairs), 1) + 0.8, 2.9))
    image = None
    for j, (lig, rec) in enumerate(pairs):
        sel = table[(table['ligand'] == lig) & (table['receptor'] == rec)]
        grid = np.full((len(cell_types), len(cell_types)), np.nan)
        for s, r, v in zip(sel['sender_type'], sel['receiver_type'], sel[score]):
            grid[cell_types.index(str(s)), cell_types.index(str(r))] = abs(v)
        ax = axes[0][j]
        image = ax.imshow(grid, cmap='viridis', vmin=0, vmax=vmax or 1.0)
        ax.set_xticks(range(len(cell_types)), cell_types, fontsize=7, rotation=90)
        ax.set_yticks(range(len(cell_types)), cell_types, fontsize=7)
        ax.set_title(f'{lig} -> {rec}', fontsize=8)
        ax.set_xlabel('receiver type', fontsize=7)
        if j == 0:
            ax.set_ylabel('sender type', fontsize=7)
    if not pairs:
        axes[0][0].set_title('no intercellular edges', fontsize=8)
        axes[0][0].axis('off')
    elif image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=score)
        return _save_no_tight(fig, path)
    return _finish(fig, path)


def _save_no_tight(fig, path):
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches='tight')
    return fig


def spatial_edge_map(data, edge_score: Tensor, ligand: str, receptor: str,
                     title: Optional[str] = None,
                     path: Optional[Union[str, os.PathLike]] = None):
    r"""A map of the tissue coloured by the learned incoming signalling of one
    ligand -> receptor pair per cell (:math:`\sum |s_e|` over its ``signals``
    edges), with the cell types outlined.

    Args:
        data (TissueData): The tissue.
        edge_score (Tensor): ``[E_signals]`` per-edge scores, e.g.
            ``edge_scores(model, data)[SIGNALS]``.
        ligand (str): The ligand.
        receptor (str): The receptor.
        title (str, optional): Title of the figure.
        path (str, optional): Where to save the PNG.
    """
    from torch_staged.plot import incoming_per_cell, spatial_signalling
    pairs = [(str(a), str(b)) for a, b in data.lr_pairs]
    if (ligand, receptor) not in pairs:
        raise ValueError(f"The pair {ligand}->{receptor} is not in the tissue's "
                         f"ligand -> receptor table {pairs[:5]}...")
    pair = pairs.index((ligand, receptor))
    incoming = incoming_per_cell(data, edge_score, pair)
    return spatial_signalling(
        data[CELL].pos, incoming, cell_type=data[CELL].cell_type,
        type_names=list(data.cell_type_names),
        title=title or f'learned incoming {ligand}->{receptor} signalling', path=path)


def strongest_pair(data, edge_score: Tensor):
    """The (ligand, receptor) pair with the largest total |edge score|, or
    :obj:`None` without signalling edges.
    """
    if SIGNALS not in data.edge_types or data[SIGNALS].num_edges == 0:
        return None
    L = len(data.lr_pairs)
    total = torch.zeros(L, dtype=edge_score.dtype).index_add_(
        0, data[SIGNALS].lr_pair.cpu(), edge_score.detach().abs().cpu())
    a, b = data.lr_pairs[int(total.argmax())]
    return str(a), str(b)


def response_table(result, gene_names: Sequence[str], cells=None) -> pd.DataFrame:
    r"""Mean perturbation response per gene and time, ``[T, G]`` as a
    DataFrame (index: time, columns: genes), averaged over all cells or over
    the boolean mask :obj:`cells` ``[N]`` (graph order).
    """
    delta = result.delta.detach().cpu().double()
    if cells is not None:
        delta = delta[:, torch.as_tensor(cells, dtype=torch.bool)]
    mean = delta.mean(1).numpy()
    return pd.DataFrame(mean, index=pd.Index(result.t.detach().cpu().double().numpy(),
                                             name='time'),
                        columns=[str(g) for g in gene_names])


def response_curves(result, gene_names: Sequence[str], top: int = 6,
                    exclude: Sequence[str] = (), cells=None, title: Optional[str] = None,
                    path: Optional[Union[str, os.PathLike]] = None):
    r"""Perturbation response curves: the mean difference perturbed - baseline
    over time of the :obj:`top` most affected genes (largest
    :math:`\max_t |\overline{\Delta x}_g(t)|`), leaving out :obj:`exclude`
    (e.g. the knocked-out genes themselves).

    Args:
        result (PerturbationResult): From :func:`torch_staged.perturb`.
        gene_names (list of str): The gene panel.
        top (int, optional): Number of genes shown. (default: :obj:`6`)
        exclude (list of str, optional): Genes left out of the ranking.
        cells (Tensor, optional): Boolean ``[N]`` mask (graph order) of the
            cells averaged over. (default: all cells)
        title (str, optional): Title (default: the perturbation).
        path (str, optional): Where to save the PNG.
    """
    plt = _plt()
    table = response_table(result, gene_names, cells)
    effect = table.abs().max(0).drop([g for g in exclude if g in table.columns])
    genes = list(effect.sort_values(ascending=False).index[:max(int(top), 1)])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for gene in genes:
        ax.plot(table.index, table[gene], label=gene)
    ax.axhline(0.0, color='grey', lw=0.8, ls='--')
    ax.set_xlabel('time')
    ax.set_ylabel('mean expression change\n(perturbed - baseline)')
    ax.set_title(title or result.description, fontsize=8)
    if genes:
        ax.legend(fontsize=7)
    return _finish(fig, path)
