"""Input checks at the AnnData boundary.

Every check runs before any long computation, raises a :class:`ValueError` (or
:class:`TypeError`) whose message says what is wrong and how to fix it, and
never modifies the AnnData it inspects.
"""
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import sparse

#: Options for prior rows naming genes absent from the panel.
MISSING_OPTIONS = ('raise', 'drop', 'ignore')


def _shown(values: Sequence, limit: int = 10) -> list:
    values = list(values)
    return values[:limit] + (['...'] if len(values) > limit else [])


def check_anndata(adata: Any, arg: str = 'adata') -> None:
    """Raises unless :obj:`adata` is an :class:`anndata.AnnData`."""
    import anndata as ad
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"'{arg}' must be an anndata.AnnData (got "
                        f"{type(adata).__name__})")
    if adata.n_obs == 0:
        raise ValueError(f"'{arg}' has no rows (n_obs = 0)")


def check_missing_option(missing_genes: str) -> None:
    """Raises unless :obj:`missing_genes` is one of :data:`MISSING_OPTIONS`."""
    if missing_genes not in MISSING_OPTIONS:
        raise ValueError(f"'missing_genes' must be one of {MISSING_OPTIONS} "
                         f"(got {missing_genes!r})")


def check_obs_key(adata, key: str, arg: str, what: str) -> pd.Series:
    """Returns ``adata.obs[key]``; raises naming the argument if it is absent."""
    if not isinstance(key, str) or key not in adata.obs.columns:
        raise ValueError(
            f"adata.obs has no column {key!r} with the {what} ({arg}={key!r}); it "
            f"has {_shown(adata.obs.columns)}. Pass {arg}='<column>' naming the "
            f"column that holds the {what}")
    column = adata.obs[key]
    if column.isna().any():
        rows = np.flatnonzero(column.isna().to_numpy())
        raise ValueError(f"adata.obs[{key!r}] ({what}) has {rows.size} empty "
                         f"entries, e.g. rows {adata.obs_names[rows[:5]].tolist()}: "
                         f"fill them in or drop these rows")
    return column


def check_spatial(adata, spatial_key: str) -> np.ndarray:
    """Returns ``adata.obsm[spatial_key]`` as a float64 ``[n_obs, 2 or 3]`` array."""
    if spatial_key not in adata.obsm:
        raise ValueError(
            f"adata.obsm has no {spatial_key!r} (spatial_key={spatial_key!r}); it "
            f"has {list(adata.obsm.keys())}. Store the cell coordinates as "
            f"adata.obsm['spatial'] = array of shape [n_obs, 2] (the scverse "
            f"convention), or pass spatial_key='<key>'")
    pos = adata.obsm[spatial_key]
    if isinstance(pos, pd.DataFrame):
        pos = pos.to_numpy()
    if sparse.issparse(pos):
        pos = pos.toarray()
    pos = np.asarray(pos)
    if pos.ndim != 2 or pos.shape[1] not in (2, 3):
        raise ValueError(f"adata.obsm[{spatial_key!r}] must have shape [n_obs, 2] or "
                         f"[n_obs, 3] (got {list(pos.shape)})")
    if not np.issubdtype(pos.dtype, np.number):
        raise ValueError(f"adata.obsm[{spatial_key!r}] must be numeric (got dtype "
                         f"{pos.dtype})")
    pos = pos.astype(np.float64)
    bad = ~np.isfinite(pos).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"adata.obsm[{spatial_key!r}] has NaN or Inf in {rows.size} "
                         f"row(s), e.g. {adata.obs_names[rows[:5]].tolist()}: drop "
                         f"these rows or fix their coordinates")
    return pos


def expression_matrix(adata, layer: Optional[str]):
    """``adata.X`` or ``adata.layers[layer]`` (dense or sparse, not copied)."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty (None): pass layer='<name>' to read "
                             f"one of the layers {list(adata.layers.keys())}")
        return adata.X
    if layer not in adata.layers:
        raise ValueError(f"adata.layers has no {layer!r} (layer={layer!r}); it has "
                         f"{list(adata.layers.keys())}. Pass layer=None to read "
                         f"adata.X")
    return adata.layers[layer]


def check_expression(matrix, columns: Optional[np.ndarray], where: str,
                     allow_negative: bool) -> None:
    """Raises if the panel's columns of :obj:`matrix` hold NaN/Inf, or negative
    values when :obj:`allow_negative` is :obj:`False`. Sparse matrices are
    checked on their stored values only (implicit zeros are fine).
    """
    if columns is not None:
        matrix = matrix[:, columns]
    if sparse.issparse(matrix):
        values = np.asarray(matrix.tocsr().data)
    else:
        values = np.asarray(matrix)
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{where} must be numeric (got dtype {values.dtype})")
    finite = np.isfinite(values)
    if not finite.all():
        raise ValueError(
            f"{where} has {int((~finite).sum())} NaN or Inf value(s): impute or "
            f"drop them (e.g. replace NaN by 0 for undetected genes) before "
            f"reading")
    if not allow_negative:
        negative = values < 0
        if negative.any():
            raise ValueError(
                f"{where} has {int(negative.sum())} negative value(s) (minimum "
                f"{float(values.min()):.4g}), which counts and log-normalised "
                f"expression cannot have. Read the raw or log-normalised layer "
                f"(layer='<name>'), or pass allow_negative=True if the data is "
                f"centred or scaled on purpose")


def check_gene_panel(adata, genes: Optional[Sequence[str]]
                     ) -> Tuple[List[str], Optional[np.ndarray]]:
    """The gene panel (names) and its column indices in ``adata.var_names``
    (:obj:`None` for all columns in order).
    """
    var_names = [str(g) for g in adata.var_names]
    if len(set(var_names)) != len(var_names):
        dup = pd.Index(var_names)[pd.Index(var_names).duplicated()].unique().tolist()
        raise ValueError(f"adata.var_names has duplicated genes {_shown(dup)}: call "
                         f"adata.var_names_make_unique() on a copy first")
    if genes is None:
        if not var_names:
            raise ValueError("adata has no genes (n_vars = 0)")
        return var_names, None
    if isinstance(genes, str):
        raise TypeError(f"'genes' must be a list of gene names (got the string "
                        f"{genes!r})")
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError("'genes' is empty: give the gene panel, or genes=None for "
                         "all of adata.var_names")
    dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"'genes' has duplicated names {_shown(dup)}")
    index = pd.Index(var_names).get_indexer(genes)
    if (index < 0).any():
        absent = [g for g, i in zip(genes, index) if i < 0]
        raise ValueError(
            f"The gene panel differs from adata.var_names: {len(absent)} of the "
            f"{len(genes)} requested genes are absent, {_shown(absent)}. The data "
            f"must measure every gene of the panel (e.g. of the trained model); "
            f"check spelling and case, or subset the panel")
    return genes, index.astype(np.int64)


def numeric_times(column: pd.Series, time_key: str) -> np.ndarray:
    """The times as float64; raises if not numeric or not finite."""
    values = column
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(values.cat.categories.dtype)
    try:
        times = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        examples = pd.unique(column.astype(str))[:5].tolist()
        raise ValueError(
            f"adata.obs[{time_key!r}] must hold numeric times (got values like "
            f"{examples}): convert them to numbers first, e.g. 'day3' -> 3.0"
        ) from None
    if not np.isfinite(times).all():
        raise ValueError(f"adata.obs[{time_key!r}] has NaN or Inf times")
    return times


def check_two_times(times: np.ndarray, time_key: str) -> None:
    """Raises when fewer than two distinct time points are given."""
    unique = np.unique(times)
    if unique.size < 2:
        raise ValueError(
            f"adata.obs[{time_key!r}] has {unique.size} distinct time point(s) "
            f"{unique.tolist()}, but dynamics need at least two: give data "
            f"observed at two or more times (or check time_key={time_key!r})")


def check_unique_rows(cell: np.ndarray, time: np.ndarray, num_cells: int,
                      cell_ids: Sequence, times: np.ndarray, cell_key: str,
                      time_key: str) -> np.ndarray:
    """Raises if a (cell, time) pair has more than one row; returns per-pair counts
    ``[T * N]`` (time-major).
    """
    key = time.astype(np.int64) * num_cells + cell
    seen = np.bincount(key, minlength=times.size * num_cells)
    if (seen > 1).any():
        dup = np.flatnonzero(seen > 1)
        shown = [(cell_ids[k % num_cells], float(times[k // num_cells]))
                 for k in dup[:5]]
        raise ValueError(
            f"{dup.size} (cell, time) pair(s) have more than one row, e.g. "
            f"({cell_key}, {time_key}) = {shown}. Long format needs one row per "
            f"cell and time: drop or aggregate the duplicated rows, or check that "
            f"cell_key={cell_key!r} holds unique cell ids")
    return seen


def check_constant_per_cell(values: np.ndarray, cell: np.ndarray, first: np.ndarray,
                            cell_ids: Sequence, what: str, fix: str,
                            atol: float = 0.0) -> None:
    """Raises if a cell's :obj:`values` differ between its rows."""
    if values.ndim == 1:
        differs = values != values[first][cell]
    else:
        differs = (np.abs(values - values[first][cell]) > atol).any(axis=1)
    if differs.any():
        bad = np.unique(cell[differs])
        raise ValueError(
            f"{bad.size} cell(s) have a different {what} at different times, e.g. "
            f"{_shown([cell_ids[c] for c in bad], 5)}. {fix}")


def check_known_types(labels: Sequence[str], cell_types: Sequence[str],
                      type_key: str) -> None:
    """Raises if :obj:`labels` holds a cell type that is not in :obj:`cell_types`."""
    unknown = sorted(set(labels) - {str(c) for c in cell_types})
    if unknown:
        raise ValueError(
            f"adata.obs[{type_key!r}] has cell type(s) {_shown(unknown)} that are "
            f"not among the known cell types {list(cell_types)} (e.g. those the "
            f"model was trained on). A model can only predict cell types it was "
            f"trained on: drop these cells, relabel them, or retrain with them")


def check_model(model, genes: Sequence[str], cell_types: Sequence[str],
                model_genes: Optional[Sequence[str]],
                model_cell_types: Optional[Sequence[str]]) -> None:
    """Raises if the data's gene panel or cell types do not fit :obj:`model`."""
    genes = [str(g) for g in genes]
    num_genes = getattr(model, 'num_genes', None)
    if model_genes is not None:
        model_genes = [str(g) for g in model_genes]
        if num_genes is not None and len(model_genes) != num_genes:
            raise ValueError(f"'model_genes' lists {len(model_genes)} genes but the "
                             f"model has num_genes={num_genes}")
        if model_genes != genes:
            absent = [g for g in model_genes if g not in set(genes)]
            extra = [g for g in genes if g not in set(model_genes)]
            detail = (f"{len(absent)} model gene(s) absent from the data "
                      f"{_shown(absent)}, {len(extra)} data gene(s) unknown to "
                      f"the model {_shown(extra)}" if absent or extra
                      else "the same genes in a different order")
            raise ValueError(
                f"The gene panel of the data differs from the model's: {detail}. "
                f"Read the data with read_trajectories(adata, genes=model_genes) "
                f"so that the panel and its order are the model's")
    if num_genes is not None and len(genes) != num_genes:
        raise ValueError(
            f"The gene panel of the data has {len(genes)} genes but the model "
            f"was built for num_genes={num_genes}: read the data with "
            f"read_trajectories(adata, genes=<the model's gene list>)")
    cell_types = [str(c) for c in cell_types]
    if model_cell_types is not None:
        model_cell_types = [str(c) for c in model_cell_types]
        unknown = [c for c in cell_types if c not in set(model_cell_types)]
        if unknown:
            raise ValueError(
                f"Unknown cell type(s) {_shown(unknown)} at predict time: the model "
                f"knows {model_cell_types}. Drop or relabel these cells")
        if cell_types != model_cell_types[:len(cell_types)]:
            raise ValueError(
                f"The cell-type codes of the data {cell_types} differ from the "
                f"model's {model_cell_types}: read the data with "
                f"read_trajectories(adata, cell_types=model_cell_types)")
    num_types = getattr(model, 'num_cell_types', None)
    if num_types is not None and len(cell_types) > num_types:
        raise ValueError(
            f"The data has {len(cell_types)} cell types {_shown(cell_types)} but "
            f"the model knows only num_cell_types={num_types}: unknown cell "
            f"type(s) at predict time. Read the data with "
            f"read_trajectories(adata, cell_types=<the model's cell types>)")
