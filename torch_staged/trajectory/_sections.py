"""Public section alignment on AnnData."""
from typing import Optional, Sequence

import numpy as np
from scipy import sparse

from torch_staged.io._constants import Key
from torch_staged.io._validate import (
    check_anndata,
    check_expression,
    check_gene_panel,
    check_obs_key,
    check_spatial,
    expression_matrix,
    numeric_times,
)
from torch_staged.trajectory._align import TRANSFORMS, align_all
from torch_staged.trajectory._ot import _features, _sections, alignment_table


def align_sections(
    adata,
    library_key: Optional[str],
    time_key: str = Key.obs.time,
    *,
    type_key: Optional[str] = Key.obs.cell_type,
    spatial_key: str = Key.obsm.spatial,
    layer: Optional[str] = None,
    genes: Optional[Sequence[str]] = None,
    transform: str = 'rigid',
    structure_weight: float = 0.5,
    num_samples: int = 300,
    refine: int = 5,
    allow_negative: bool = False,
    seed: int = 0,
):
    r"""Maps every tissue section into one coordinate frame.

    A section is a value of ``obs[library_key]`` at one time (without a
    library key, every time is one section). The first section of the first
    time is the reference frame; the other sections of that time are aligned
    onto it, and every section of time :math:`t_k` onto the pooled, aligned
    sections of :math:`t_{k-1}`. Each alignment is a fused
    Gromov-Wasserstein coupling (POT) of expression and type (feature cost)
    and of the distances within each section (structure), on subsamples of at
    most :obj:`num_samples` cells per side, from eight starts, followed by
    weighted Procrustes and :obj:`refine` rounds of transport on
    expression + aligned distance (see :mod:`torch_staged.trajectory._align`).
    Memory is :math:`O(\text{num\_samples}^2)` per alignment, linear in cells
    overall.

    Args:
        adata (anndata.AnnData): Long-format snapshots (never modified).
        library_key (str, optional): ``obs`` column of the sections.
        time_key (str, optional): ``obs`` column of the numeric times.
            (default: :obj:`'time'`)
        type_key (str, optional): ``obs`` column of the cell types (cells of
            different types cost 1 more to match), or :obj:`None`.
            (default: :obj:`'cell_type'`)
        spatial_key (str, optional): ``obsm`` key of the positions.
            (default: :obj:`'spatial'`)
        layer (str, optional): Read ``layers[layer]`` instead of ``X``.
        genes (list of str, optional): Genes of the feature cost.
        transform (str, optional): ``'rigid'`` (rotation, mirroring, shift) or
            ``'affine'``. (default: :obj:`'rigid'`)
        structure_weight (float, optional): Weight :math:`\beta \in [0, 1)` of
            the structure term. (default: :obj:`0.5`)
        num_samples (int, optional): Cells per side of each coupling.
            (default: :obj:`300`)
        refine (int, optional): Transport + Procrustes rounds. (default: :obj:`5`)
        allow_negative (bool, optional): Accept negative expression.
        seed (int, optional): Seed of the subsamples. (default: :obj:`0`)

    Returns:
        A copy of :obj:`adata` with ``obsm['spatial_aligned']`` ``[n_obs, D]``
        and ``uns['staged_alignment']``: one row per section with its time,
        reference, the map :math:`x \mapsto A x + c` (columns ``A00, A01, ..,
        c0, ..``), ``mirrored`` and the costs.

    Example:
        >>> from torch_staged.trajectory import align_sections
        >>> out = align_sections(adata, 'section')  # doctest: +SKIP
        >>> out.uns['staged_alignment'][['time', 'mirrored']]  # doctest: +SKIP
    """
    check_anndata(adata)
    if transform not in TRANSFORMS:
        raise ValueError(f"'transform' must be one of {TRANSFORMS} (got {transform!r})")
    if not 0 <= structure_weight < 1:
        raise ValueError(f"'structure_weight' must be in [0, 1) (got "
                         f"{structure_weight!r})")
    if not isinstance(num_samples, int) or num_samples < 3:
        raise ValueError(f"'num_samples' must be an integer >= 3 (got {num_samples!r})")
    time_col = check_obs_key(adata, time_key, 'time_key', 'observation times')
    times, time = np.unique(numeric_times(time_col, time_key), return_inverse=True)
    pos = check_spatial(adata, spatial_key)
    matrix = expression_matrix(adata, layer)
    panel, columns = check_gene_panel(adata, genes)
    check_expression(matrix, columns,
                     'adata.X' if layer is None else f'adata.layers[{layer!r}]',
                     allow_negative)
    types = None
    if type_key is not None:
        types = check_obs_key(adata, type_key, 'type_key', 'cell types'
                              ).astype(str).to_numpy()
    section, section_time, names, _ = _sections(adata, library_key, time.reshape(-1),
                                                times)
    values = matrix if columns is None else matrix[:, columns]
    values = values.toarray() if sparse.issparse(values) else np.asarray(values)
    feat = _features(values.astype(np.float64), True, None)
    scale = 2.0 * float(feat.var(axis=0).sum()) or 1.0
    aligned, records = align_all(pos, feat, types, section, section_time, names,
                                 scale=scale, transform=transform,
                                 structure_weight=float(structure_weight),
                                 num_samples=num_samples, refine=int(refine),
                                 seed=seed)
    out = adata.copy()
    out.obsm[Key.obsm.aligned] = aligned
    out.uns['staged_alignment'] = alignment_table(records, times)
    return out
