"""How much of a prior resource survives a gene panel, before fitting."""
import warnings
from typing import Dict, Mapping, Optional, Sequence, Union

import pandas as pd

from torch_staged.io._priors import _load, read_grn, read_lr_pairs
from torch_staged.typing import PairTable

#: Gene-symbol matching rules of :func:`panel_report` and :func:`to_panel`.
MATCHES = ('exact', 'case')


def _resources(tables: Union[None, PairTable, Mapping[str, PairTable]], kind: str
               ) -> Dict[str, PairTable]:
    if tables is None:
        return {}
    if isinstance(tables, Mapping):
        return dict(tables)
    name = str(tables) if isinstance(tables, str) else kind
    return {name: tables}


def _symbol_map(genes: Sequence[str], match: str) -> Dict[str, str]:
    """Resource symbol (normalised) -> the panel's own spelling."""
    if match not in MATCHES:
        raise ValueError(f"'match' must be one of {MATCHES} (got {match!r})")
    if match == 'exact':
        return {str(g): str(g) for g in genes}
    return {str(g).upper(): str(g) for g in genes}


def to_panel(table: PairTable, genes: Sequence[str], columns: Sequence[str],
             match: str = 'case') -> pd.DataFrame:
    r"""A copy of a prior table with gene names rewritten in the panel's own
    spelling, e.g. human ``TGFB1`` -> mouse ``Tgfb1`` with ``match='case'``
    (case-insensitive: most one-to-one mouse / human orthologs differ in case
    only). Complex names (``A_B``) are rewritten subunit by subunit; names
    without a match are kept as they are.

    Args:
        table (DataFrame or path): The prior table (never modified).
        genes (list of str): The gene panel.
        columns (list of str): The columns holding gene names.
        match (str, optional): ``'exact'`` or ``'case'``. (default: :obj:`'case'`)

    Returns:
        The rewritten copy.
    """
    lookup = _symbol_map(genes, match)
    frame = _load(table, 'prior')
    if frame is None:
        raise TypeError("to_panel() needs a DataFrame or a CSV/TSV path")

    def rename(name):
        if not isinstance(name, str):
            return name
        parts = name.split('_')
        key = (lambda s: s) if match == 'exact' else str.upper
        return '_'.join(lookup.get(key(p), p) for p in parts)

    for column in columns:
        if column not in frame.columns:
            raise ValueError(f"The table has no column {column!r} (it has "
                             f"{list(frame.columns)})")
        frame[column] = frame[column].map(rename)
    return frame


def _count(reader, table, genes, columns, match) -> tuple:
    """(rows of the table, gene pairs that survive the panel)."""
    frame = _load(table, 'prior')
    rows = len(frame) if frame is not None else len(list(table))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if match != 'exact':
            canonical = reader(table, genes=None)
            keep = [c for c in list(columns) + ['cell_type'] if c in canonical.columns]
            table = to_panel(canonical[keep], genes, columns, match)
        try:
            kept = reader(table, genes=genes, missing_genes='ignore')
        except ValueError:
            return rows, 0
    return rows, len(kept)


def panel_report(
    genes: Sequence[str],
    lr_pairs: Union[None, PairTable, Mapping[str, PairTable]] = None,
    grn: Union[None, PairTable, Mapping[str, PairTable]] = None,
    *,
    match: str = 'exact',
    min_pairs: int = 1,
) -> pd.DataFrame:
    r"""Reports, per resource, how many ligand -> receptor pairs and GRN edges
    survive a gene panel, and fails early when too few ligand -> receptor
    pairs do.

    A small panel is a trap: after keeping the 100 most variable genes, a
    resource of hundreds of pairs may keep none, and the model then has no
    intercellular edges at all. Run this before fitting.

    Args:
        genes (list of str): The gene panel (e.g. ``adata.var_names``).
        lr_pairs (DataFrame, path or dict, optional): Ligand -> receptor
            resources: one table, or ``{name: table}``. Columns as
            :func:`read_lr_pairs` reads them (heteromers ``A_B`` count only when
            every subunit is in the panel). (default: :obj:`None`)
        grn (DataFrame, path or dict, optional): GRN resources, the same way.
            (default: :obj:`None`)
        match (str, optional): ``'exact'`` symbols, or ``'case'``
            (case-insensitive; covers mouse ``Tgfb1`` vs human ``TGFB1``; use
            :func:`to_panel` to rewrite a table in the panel's spelling).
            (default: :obj:`'exact'`)
        min_pairs (int, optional): Fewest surviving gene pairs a ligand ->
            receptor resource must keep; fewer raise a :class:`ValueError`
            that says what to do. (default: :obj:`1`)

    Returns:
        A DataFrame with one row per resource: ``resource``, ``kind``
        (``'lr_pairs'`` or ``'grn'``), ``rows`` (of the table), ``surviving``
        (gene pairs with both genes in the panel, complexes expanded),
        ``panel_genes`` and ``match``.

    Example:
        >>> from torch_staged.io import panel_report
        >>> panel_report(['L0', 'R0', 'G0'], lr_pairs=[('L0', 'R0'), ('L1', 'R1')])
           resource      kind  rows  surviving  panel_genes  match
        0  lr_pairs  lr_pairs     2          1            3  exact
    """
    genes = [str(g) for g in genes]
    _symbol_map(genes, match)
    if not isinstance(min_pairs, int) or min_pairs < 0:
        raise ValueError(f"'min_pairs' must be an integer >= 0 (got {min_pairs!r})")
    records = []
    for kind, tables, reader, columns in (
            ('lr_pairs', lr_pairs, read_lr_pairs, ('ligand', 'receptor')),
            ('grn', grn, read_grn, ('source', 'target'))):
        for name, table in _resources(tables, kind).items():
            rows, surviving = _count(reader, table, genes, columns, match)
            records.append(dict(resource=name, kind=kind, rows=rows,
                                surviving=surviving, panel_genes=len(genes),
                                match=match))
    report = pd.DataFrame(records, columns=['resource', 'kind', 'rows', 'surviving',
                                            'panel_genes', 'match'])
    short = report[(report['kind'] == 'lr_pairs') & (report['surviving'] < min_pairs)]
    if len(short):
        first = short.iloc[0]
        hint = ("" if match == 'case' else
                " match='case' if the symbols differ in case (mouse 'Tgfb1' vs "
                "human 'TGFB1'),")
        raise ValueError(
            f"Only {first['surviving']} of the {first['rows']} ligand -> receptor "
            f"pairs of {first['resource']!r} survive the gene panel of {len(genes)} "
            f"genes (at least {min_pairs} needed): keep the resource's ligand and "
            f"receptor genes when choosing the panel (e.g. add them to the highly "
            f"variable genes),{hint} use a resource of your species, or fit "
            f"without signalling (lr_pairs=None)")
    return report


def report_text(report: pd.DataFrame) -> Optional[str]:
    """One line per resource, e.g. for a log."""
    if report is None or len(report) == 0:
        return None
    return '\n'.join(f"{r.resource} ({r.kind}): {r.surviving} of {r.rows} survive "
                     f"the panel of {r.panel_genes} genes" for r in report.itertuples())
