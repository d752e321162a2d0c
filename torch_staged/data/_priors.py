"""Parsing and checking of prior tables: ligand -> receptor pairs and GRNs."""
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from torch_staged.typing import PairTable

MISSING_OPTIONS = ('raise', 'drop')


def as_pair_frame(table: PairTable, columns: Tuple[str, str], what: str,
                  extra: Sequence[str] = ()) -> pd.DataFrame:
    """Returns a copy of ``table`` as a DataFrame with string columns ``columns``.

    Accepts a DataFrame, a CSV path or a sequence of tuples. The user's object is
    never modified.
    """
    if isinstance(table, (str, os.PathLike)):
        if not os.path.exists(table):
            raise FileNotFoundError(f"The {what} table file '{table}' does not exist")
        frame = pd.read_csv(table)
    elif isinstance(table, pd.DataFrame):
        frame = table.copy()
    else:
        rows = list(table)
        width = len(rows[0]) if rows else len(columns)
        if any(len(r) != width for r in rows) or width not in (2, 2 + len(extra)):
            raise ValueError(
                f"The {what} table given as a list must hold tuples "
                f"{columns} (got rows of lengths {sorted({len(r) for r in rows})})")
        frame = pd.DataFrame(rows, columns=list(columns) + list(extra)[:width - 2])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"The {what} table needs the columns {list(columns)}, but "
            f"{missing} are missing (it has {list(frame.columns)})")
    for c in columns:
        if frame[c].isna().any():
            raise ValueError(f"The {what} table has empty entries in column '{c}'")
        frame[c] = frame[c].astype(str)
    return frame


def map_genes(frame: pd.DataFrame, columns: Tuple[str, str],
              gene_index: Dict[str, int], what: str, missing_genes: str,
              num_genes: int) -> pd.DataFrame:
    """Maps gene names of ``columns`` to panel indices; reports absent genes.

    With ``missing_genes='raise'`` an absent gene raises, naming which and how
    many; with ``'drop'`` the rows are dropped with a warning that says the same.
    """
    if missing_genes not in MISSING_OPTIONS:
        raise ValueError(f"'missing_genes' must be one of {MISSING_OPTIONS} "
                         f"(got '{missing_genes}')")
    ok = np.ones(len(frame), dtype=bool)
    report: List[str] = []
    for c in columns:
        present = frame[c].isin(gene_index.keys()).to_numpy()
        if not present.all():
            names = sorted(set(frame[c][~present]))
            shown = names[:10] + (['...'] if len(names) > 10 else [])
            report.append(f"{len(names)} {c} gene(s) {shown}")
        ok &= present
    if not ok.all():
        msg = (f"{int((~ok).sum())} of {len(frame)} rows of the {what} table name "
               f"genes that are not in the gene panel of {num_genes} genes: "
               f"{'; '.join(report)}.")
        if missing_genes == 'raise':
            raise ValueError(msg + " Add these genes to the panel, or pass "
                             "missing_genes='drop' to drop those rows.")
        warnings.warn(msg + " These rows were dropped (missing_genes='drop').",
                      stacklevel=3)
    frame = frame[ok].copy()
    for c in columns:
        frame[c + '_index'] = frame[c].map(gene_index).astype(np.int64)
    return frame


def lr_pair_table(lr_pairs: Optional[PairTable], gene_index: Dict[str, int],
                  missing_genes: str) -> pd.DataFrame:
    """Ligand -> receptor table with ``ligand_index`` / ``receptor_index`` columns,
    deduplicated and sorted by (receptor, ligand) index.
    """
    cols = ('ligand', 'receptor')
    if lr_pairs is None:
        empty = pd.DataFrame({'ligand': [], 'receptor': [], 'ligand_index': [],
                              'receptor_index': []})
        return empty.astype({'ligand_index': np.int64, 'receptor_index': np.int64})
    frame = as_pair_frame(lr_pairs, cols, 'ligand -> receptor')
    given = len(frame)
    frame = map_genes(frame, cols, gene_index, 'ligand -> receptor', missing_genes,
                      len(gene_index))
    if given > 0 and len(frame) == 0:
        raise ValueError(
            "The ligand -> receptor table is empty after mapping to the gene panel "
            "(no pair has both genes in the panel): check gene name spelling and "
            "case, or pass lr_pairs=None for a model without signalling")
    frame = frame.drop_duplicates(['ligand_index', 'receptor_index'])
    frame = frame.sort_values(['receptor_index', 'ligand_index'], kind='stable')
    return frame.reset_index(drop=True)


def grn_templates(grn: Optional[PairTable], gene_index: Dict[str, int],
                  cell_type_names: Sequence[str], missing_genes: str,
                  ) -> List[np.ndarray]:
    """Per cell type, the ``[M_k, 2]`` array of (source, target) gene indices of the
    prior GRN, sorted by (target, source).

    Without a prior, every type gets all ordered pairs of distinct genes. A
    ``cell_type`` column restricts a row to one type; rows with an empty
    ``cell_type`` (or a table without the column) apply to every type.
    """
    num_genes, num_types = len(gene_index), len(cell_type_names)
    if grn is None:
        src, dst = np.meshgrid(np.arange(num_genes), np.arange(num_genes))
        mask = src != dst
        pairs = np.stack([src[mask], dst[mask]], axis=1)  # row-major: sorted by dst
        return [pairs.copy() for _ in range(num_types)]

    frame = as_pair_frame(grn, ('source', 'target'), 'GRN', extra=('cell_type', ))
    frame = map_genes(frame, ('source', 'target'), gene_index, 'GRN', missing_genes,
                      num_genes)
    if 'cell_type' in frame.columns:
        names = {str(n): i for i, n in enumerate(cell_type_names)}
        given = frame['cell_type']
        has_type = (given.notna() & (given.astype(str).str.strip() != '')).to_numpy()
        if pd.api.types.is_numeric_dtype(given):
            # Integer type codes (a float column when some rows are empty).
            codes = given[has_type].to_numpy()
            if not np.all(codes == np.round(codes)):
                raise ValueError("The GRN 'cell_type' column holds non-integer numbers")
            labels = pd.Series(codes.astype(np.int64)).map(
                lambda c: str(cell_type_names[c]) if 0 <= c < num_types else f'#{c}')
        else:
            labels = given[has_type].astype(str)
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ValueError(
                f"The GRN table names cell type(s) {unknown} that are not among the "
                f"{num_types} cell types {list(cell_type_names)}. Fix the "
                f"'cell_type' column, or pass cell_types=[...] listing every type")
        type_code = np.full(len(frame), -1, dtype=np.int64)
        type_code[has_type] = labels.map(names).to_numpy()
    else:
        type_code = np.full(len(frame), -1, dtype=np.int64)

    src = frame['source_index'].to_numpy()
    dst = frame['target_index'].to_numpy()
    out = []
    for k in range(num_types):
        sel = (type_code == k) | (type_code == -1)
        pairs = np.unique(np.stack([dst[sel], src[sel]], axis=1), axis=0)[:, ::-1]
        out.append(np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1, 2))
    empty = [cell_type_names[k] for k in range(num_types) if len(out[k]) == 0]
    if empty:
        warnings.warn(
            f"The GRN prior has no edges for cell type(s) {empty}: their genes get "
            f"no intracellular messages", stacklevel=3)
    return out
