"""Figures: loss curves, trajectories, interaction heatmaps, spatial maps."""
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor


def _plt():
    import matplotlib
    if os.environ.get('MPLBACKEND') is None and matplotlib.get_backend().lower() not in (
            'agg', 'module://matplotlib_inline.backend_inline'):
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _finish(fig, path: Optional[Union[str, os.PathLike]]):
    fig.tight_layout()
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _np(value) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def loss_curves(histories: Dict[str, List[dict]], path=None):
    """Training and validation loss per epoch for one or several fits
    (``{name: FitResult.history}``); log scale. The validation panel is left
    out when no fit scored a held-out split (``fit(holdout=None)``, the
    default).
    """
    plt = _plt()
    scored = {name: [h for h in history if not np.isnan(h.get('val_loss', np.nan))]
              for name, history in histories.items()}  # every val_every epochs
    held_out = any(scored.values())
    fig, axes = plt.subplots(1, 2 if held_out else 1, figsize=(9 if held_out else 4.5, 3.5),
                             sharex=True, squeeze=False)
    axes = axes[0]
    for name, history in histories.items():
        axes[0].plot([h['epoch'] for h in history], [h['train_loss'] for h in history],
                     label=name)
        if held_out:
            axes[1].plot([h['epoch'] for h in scored[name]],
                         [h['val_loss'] for h in scored[name]], label=name)
    for ax, title in zip(axes, ['training loss', 'held-out loss']):
        ax.set_yscale('log')
        ax.set_xlabel('epoch')
        ax.set_title(title)
        ax.legend(fontsize=8)
    return _finish(fig, path)


def trajectories(t, truth, predictions: Dict[str, Tensor], cells: Sequence[int],
                 genes: Sequence[int], gene_names: Optional[Sequence[str]] = None,
                 split_time: Optional[float] = None, path=None):
    """True (dots) vs predicted (lines) trajectories ``[T, N, G]`` for a grid of
    :obj:`cells` x :obj:`genes`; a dashed line marks the start of the held-out
    times.
    """
    plt = _plt()
    t, truth = _np(t), _np(truth)
    fig, axes = plt.subplots(len(cells), len(genes), squeeze=False,
                             figsize=(2.6 * len(genes), 2.0 * len(cells)), sharex=True)
    for i, c in enumerate(cells):
        for j, g in enumerate(genes):
            ax = axes[i][j]
            ax.plot(t, truth[:, c, g], 'k.', label='observed')
            for name, pred in predictions.items():
                ax.plot(t, _np(pred)[:, c, g], label=name)
            if split_time is not None:
                ax.axvline(split_time, color='grey', ls='--', lw=0.8)
            gene = gene_names[g] if gene_names is not None else f'gene {g}'
            ax.set_title(f'cell {c}, {gene}', fontsize=8)
    axes[0][0].legend(fontsize=7)
    return _finish(fig, path)


def interaction_heatmaps(learned: pd.DataFrame, truth: pd.DataFrame,
                         score: str = 'abs_score', path=None):
    """Learned vs true intercellular strengths per ligand -> receptor pair, as
    sender type x receiver type heatmaps (learned: :obj:`score` of
    :func:`~torch_staged.interpret.interaction_tables`; truth: ``|strength|``),
    on one colour scale per row.
    """
    plt = _plt()
    keys = ['ligand', 'receptor']
    pairs = truth[keys].drop_duplicates().values.tolist()
    types = sorted(set(truth['sender_type']) | set(truth['receiver_type']))
    vmax = {'true': float(truth['strength'].abs().max()) or 1.0,
            'learned': float(learned[score].abs().max()) if len(learned) else 1.0}
    fig, axes = plt.subplots(2, len(pairs), squeeze=False,
                             figsize=(2.4 * len(pairs), 4.8))
    for j, (lig, rec) in enumerate(pairs):
        for i, (table, col, label) in enumerate(((truth, 'strength', 'true'),
                                                 (learned, score, 'learned'))):
            sel = table[(table['ligand'] == lig) & (table['receptor'] == rec)]
            grid = np.full((len(types), len(types)), np.nan)
            for _, row in sel.iterrows():
                grid[types.index(row['sender_type']), types.index(row['receiver_type'])] = \
                    abs(row[col])
            ax = axes[i][j]
            ax.imshow(grid, cmap='viridis', vmin=0, vmax=vmax[label])
            ax.set_xticks(range(len(types)), types, fontsize=7)
            ax.set_yticks(range(len(types)), types, fontsize=7)
            ax.set_title(f'{label}: {lig}->{rec}', fontsize=8)
            if j == 0:
                ax.set_ylabel('sender type')
            ax.set_xlabel('receiver type', fontsize=7)
    return _finish(fig, path)


def spatial_signalling(pos, values, title: str = '', cell_type=None, path=None,
                       type_names: Optional[Sequence[str]] = None):
    """A map of the tissue coloured by a per-cell value (e.g. the incoming
    strength of one ligand -> receptor pair), with each cell outlined in the
    colour of its type and a legend of the types.

    Args:
        pos: ``[N, 2]`` cell positions.
        values: ``[N]`` the value per cell (the fill colour).
        title (str, optional): Title of the figure.
        cell_type (optional): ``[N]`` integer cell-type codes (outline colours).
        path (str, optional): Where to save the PNG.
        type_names (list, optional): Names of the type codes in the legend
            (default: ``type 0``, ``type 1``, ...).
    """
    plt = _plt()
    pos, values = _np(pos), _np(values)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    sc = ax.scatter(pos[:, 0], pos[:, 1], c=values, s=18, cmap='magma',
                    edgecolors='none')
    if cell_type is not None:
        codes = _np(cell_type)
        for code in np.unique(codes):
            sel = codes == code
            label = (str(type_names[int(code)]) if type_names is not None
                     and int(code) < len(type_names) else f'type {int(code)}')
            ax.scatter(pos[sel, 0], pos[sel, 1], s=40, facecolors='none',
                       edgecolors=f'C{int(code) % 10}', linewidths=0.4, label=label)
        legend = ax.legend(title='cell type (outline)', fontsize=7, title_fontsize=7,
                           loc='upper left', bbox_to_anchor=(1.25, 1.0), frameon=False)
        for handle in getattr(legend, 'legend_handles', None) or legend.legendHandles:
            handle.set_linewidth(1.5)
    fig.colorbar(sc, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_aspect('equal')
    return _finish(fig, path)


def incoming_per_cell(data, edge_score: Tensor, pair: int) -> Tensor:
    """Sum of |edge score| of the signalling edges of ligand -> receptor pair
    :obj:`pair` entering each cell, ``[N]`` (graph cell order).
    """
    from torch_staged.typing import SIGNALS
    G = data.num_genes
    sel = data[SIGNALS].lr_pair == pair
    dst = data[SIGNALS].edge_index[1, sel] // G
    out = torch.zeros(data.num_cells, dtype=edge_score.dtype)
    return out.index_add_(0, dst.cpu(), edge_score[sel].abs().cpu())
