"""Prior knowledge tables: ligand -> receptor pairs and gene-regulatory networks."""
import os
import warnings
from importlib import resources
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from torch_staged.data._priors import as_pair_frame, map_genes
from torch_staged.io._validate import _shown, check_missing_option
from torch_staged.typing import PairTable

#: Accepted column names (case-insensitive), preferred first.
LIGAND_ALIASES = ('ligand', 'ligand_symbol', 'ligand_genesymbol', 'ligand_gene',
                  'source_genesymbol', 'source', 'sender', 'from')
RECEPTOR_ALIASES = ('receptor', 'receptor_symbol', 'receptor_genesymbol',
                    'receptor_gene', 'target_genesymbol', 'target', 'receiver', 'to')
SOURCE_ALIASES = ('source', 'regulator', 'tf', 'source_gene', 'source_genesymbol',
                  'from')
TARGET_ALIASES = ('target', 'target_gene', 'target_genesymbol', 'gene', 'to')
TYPE_ALIASES = ('cell_type', 'celltype', 'cell type', 'type')

BUILTIN_FILE = 'lr_pairs_simulator.csv'


def _load(source: PairTable, what: str) -> Optional[pd.DataFrame]:
    """A copy of :obj:`source` as a DataFrame, or :obj:`None` for a list of tuples
    (which :func:`as_pair_frame` reads with the canonical columns).
    """
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"The {what} table file '{path}' does not exist")
        name = path.lower()[:-3] if path.lower().endswith('.gz') else path.lower()
        sep = '\t' if name.endswith(('.tsv', '.txt', '.tab')) else ','
        try:
            frame = pd.read_csv(path, sep=sep)
        except pd.errors.EmptyDataError:
            raise ValueError(f"The {what} table file '{path}' is empty: write a header "
                             f"line and one row per pair into it") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise ValueError(f"The {what} table file '{path}' could not be read as "
                             f"a {'TSV' if sep != ',' else 'CSV'} table: "
                             f"{str(err).splitlines()[0]}") from None
        return frame
    return None


def _rename(frame: pd.DataFrame, wanted: Sequence[Tuple[str, Sequence[str], str]],
            what: str, required: int) -> pd.DataFrame:
    """Renames the first matching alias of each wanted column to its canonical
    name. ``wanted`` holds ``(canonical, aliases, explicit)``; ``explicit`` (a
    user-given column) wins over aliases.
    """
    lower = {str(c).lower(): c for c in frame.columns}
    mapping, used = {}, set()
    for i, (canonical, aliases, explicit) in enumerate(wanted):
        if explicit is not None:
            if explicit not in frame.columns:
                raise ValueError(f"The {what} table has no column {explicit!r} (it "
                                 f"has {list(frame.columns)})")
            column = explicit
        else:
            column = next((lower[a] for a in aliases
                           if a in lower and lower[a] not in used), None)
        if column is None:
            if i < required:
                raise ValueError(
                    f"The {what} table needs a {canonical!r} column (or one of "
                    f"{list(aliases[1:])}); it has {list(frame.columns)}. Rename "
                    f"the column or pass {canonical}_key='<column>'")
            continue
        used.add(column)
        if column != canonical:
            if canonical in frame.columns:
                frame = frame.drop(columns=canonical)
            mapping[column] = canonical
    return frame.rename(columns=mapping)


def _split(names: pd.Series, sep: Optional[str], panel: Optional[set]) -> pd.Series:
    """Subunit lists of (possibly heteromeric) gene names. A name that is itself a
    gene of the panel is never split.
    """
    def parts(name: str) -> list:
        if sep is None or sep not in name or (panel is not None and name in panel):
            return [name]
        return [p for p in name.split(sep) if p] or [name]
    return names.map(parts)


def _unexpanded(frame: pd.DataFrame) -> pd.DataFrame:
    """A table :func:`read_lr_pairs` wrote (``ligand``, ``receptor``,
    ``ligand_complex``, ``receptor_complex``) back to one row per complex pair,
    so that reading it again (e.g. with another gene panel) expands and checks
    the complexes afresh instead of failing.
    """
    names = ('ligand', 'receptor', 'ligand_complex', 'receptor_complex')
    if not set(names) <= set(frame.columns):
        return frame
    rows = frame.drop(columns=['ligand', 'receptor']).drop_duplicates()
    rows = rows.rename(columns={'ligand_complex': 'ligand',
                                'receptor_complex': 'receptor'})
    return rows[['ligand', 'receptor'] + [c for c in rows.columns
                                          if c not in ('ligand', 'receptor')]]


def read_lr_pairs(
    source: PairTable,
    *,
    genes: Optional[Sequence[str]] = None,
    missing_genes: str = 'raise',
    complex_sep: Optional[str] = '_',
    ligand_key: Optional[str] = None,
    receptor_key: Optional[str] = None,
) -> pd.DataFrame:
    r"""Reads a ligand -> receptor table and expands heteromeric complexes.

    Columns are found by name, case-insensitively: ``ligand`` (or
    ``ligand_symbol``, ``source_genesymbol``, ``source``, ...) and ``receptor``
    (or ``receptor_symbol``, ``target_genesymbol``, ``target``, ...). Other
    columns are kept.

    **Heteromers.** A name joined by :obj:`complex_sep` (``'ITGA1_ITGB1'``, as
    liana and CellPhoneDB write complexes) is a complex of several subunits. It
    is expanded into one row per (ligand subunit, receptor subunit), and the
    original names are kept in the ``ligand_complex`` and ``receptor_complex``
    columns (equal to ``ligand`` / ``receptor`` for single genes), so every
    subunit gene node receives (or sends) the signal. When :obj:`genes` is
    given, a complex is kept only if **all** its subunits are in the panel (a
    receptor missing a subunit is not functional); a name that is itself a gene
    of the panel is never split.

    Args:
        source (DataFrame, CSV/TSV path or list of tuples): The table. The
            user's object is never modified.
        genes (list of str, optional): The gene panel. When given, rows whose
            genes (or complex subunits) are absent are handled by
            :obj:`missing_genes`, and an empty result raises.
            (default: :obj:`None`)
        missing_genes (str, optional): ``'raise'`` (a :class:`ValueError` listing
            the absent genes), ``'drop'`` (drop those rows with a warning listing
            them) or ``'ignore'`` (drop them silently, for large resources).
            (default: :obj:`'raise'`)
        complex_sep (str, optional): Separator of complex subunits;
            :obj:`None` never splits names. (default: :obj:`'_'`)
        ligand_key (str, optional): Column with the ligands, instead of the
            aliases. (default: :obj:`None`)
        receptor_key (str, optional): Column with the receptors.
            (default: :obj:`None`)

    Returns:
        A new DataFrame with columns ``ligand``, ``receptor``,
        ``ligand_complex``, ``receptor_complex`` (then the table's other
        columns), one row per distinct (ligand, receptor) gene pair (first
        occurrence kept), ready for
        :func:`~torch_staged.data.build_tissue_graph`.

    Example:
        >>> import pandas as pd
        >>> from torch_staged.io import read_lr_pairs
        >>> table = pd.DataFrame({'source': ['TGFB1', 'CXCL12'],
        ...                       'target': ['TGFBR1_TGFBR2', 'CXCR4']})
        >>> read_lr_pairs(table)[['ligand', 'receptor', 'receptor_complex']]
           ligand receptor receptor_complex
        0   TGFB1   TGFBR1    TGFBR1_TGFBR2
        1   TGFB1   TGFBR2    TGFBR1_TGFBR2
        2  CXCL12    CXCR4            CXCR4
    """
    check_missing_option(missing_genes)
    what = 'ligand -> receptor'
    cols = ('ligand', 'receptor')
    frame = _load(source, what)
    if frame is not None:
        frame = _unexpanded(frame)
        frame = _rename(frame, [('ligand', LIGAND_ALIASES, ligand_key),
                                ('receptor', RECEPTOR_ALIASES, receptor_key)],
                        what, required=2)
    frame = as_pair_frame(source if frame is None else frame, cols, what)
    if len(frame) == 0:
        where = (f" (file '{os.fspath(source)}')"
                 if isinstance(source, (str, os.PathLike)) else '')
        raise ValueError(f"The {what} table{where} has no rows: give at least one "
                         f"pair, or lr_pairs=None for a model without signalling")
    for c in cols:
        frame[c] = frame[c].str.strip()
    panel = None if genes is None else {str(g) for g in genes}

    frame = frame.reset_index(drop=True)
    frame.insert(2, 'ligand_complex', frame['ligand'])
    frame.insert(3, 'receptor_complex', frame['receptor'])
    frame['__row__'] = np.arange(len(frame))
    frame['ligand'] = _split(frame['ligand'], complex_sep, panel)
    frame['receptor'] = _split(frame['receptor'], complex_sep, panel)
    frame = frame.explode('ligand').explode('receptor').reset_index(drop=True)

    if panel is not None:
        present = frame['ligand'].isin(panel) & frame['receptor'].isin(panel)
        row_ok = present.groupby(frame['__row__']).transform('all').to_numpy()
        num_rows = int(frame['__row__'].nunique())
        bad_rows = int(frame.loc[~row_ok, '__row__'].nunique())
        if bad_rows:
            report = []
            for side in cols:
                absent = sorted(set(frame[side][~frame[side].isin(panel)]))
                if absent:
                    report.append(f"{len(absent)} {side} gene(s) {_shown(absent)}")
            cplx = sorted({c for side in cols for c in frame.loc[
                ~frame[side].isin(panel) & (frame[side] != frame[f'{side}_complex']),
                f'{side}_complex']})
            if cplx:
                report.append(f"{len(cplx)} incomplete complex(es) {_shown(cplx)}")
            msg = (f"{bad_rows} of {num_rows} rows of the {what} table name genes "
                   f"that are not in the gene panel of {len(panel)} genes: "
                   f"{'; '.join(report)}.")
            if row_ok.sum() == 0:
                raise ValueError(
                    f"The {what} table is empty after mapping to the gene panel: "
                    f"{msg} Check gene name spelling and case (e.g. human 'TGFB1' "
                    f"vs mouse 'Tgfb1'), or pass lr_pairs=None for a model "
                    f"without signalling")
            if missing_genes == 'raise':
                raise ValueError(msg + " Add these genes to the panel, or pass "
                                 "missing_genes='drop' to drop those rows (a complex "
                                 "needs all its subunits).")
            if missing_genes == 'drop':
                warnings.warn(msg + " These rows were dropped (missing_genes='drop').",
                              stacklevel=2)
            frame = frame[row_ok]
    frame = frame.drop(columns='__row__').drop_duplicates(['ligand', 'receptor'])
    frame['ligand'] = frame['ligand'].astype(str)
    frame['receptor'] = frame['receptor'].astype(str)
    return frame.reset_index(drop=True)


def read_grn(
    source: PairTable,
    *,
    genes: Optional[Sequence[str]] = None,
    missing_genes: str = 'raise',
    source_key: Optional[str] = None,
    target_key: Optional[str] = None,
    cell_type_key: Optional[str] = None,
) -> pd.DataFrame:
    r"""Reads a prior gene-regulatory network (regulator -> target).

    Columns are found by name, case-insensitively: ``source`` (or ``regulator``,
    ``tf``, ...), ``target`` (or ``target_gene``, ``gene``, ...) and optionally
    ``cell_type`` (or ``celltype``, ``type``); a row with an empty cell type
    applies to every type. Other columns (e.g. a sign or weight) are kept.

    Args:
        source (DataFrame, CSV/TSV path or list of tuples): The table. The
            user's object is never modified.
        genes (list of str, optional): The gene panel; rows naming absent genes
            are handled by :obj:`missing_genes`. (default: :obj:`None`)
        missing_genes (str, optional): ``'raise'``, ``'drop'`` (with a warning)
            or ``'ignore'``. (default: :obj:`'raise'`)
        source_key (str, optional): Column with the regulators.
        target_key (str, optional): Column with the targets.
        cell_type_key (str, optional): Column with the cell types.

    Returns:
        A new DataFrame with columns ``source``, ``target`` (and ``cell_type``
        when given, ``''`` for rows of every type), ready for
        :func:`~torch_staged.data.build_tissue_graph`.

    Example:
        >>> from torch_staged.io import read_grn
        >>> read_grn([('A', 'B'), ('B', 'C')], genes=['A', 'B', 'C'])
          source target
        0      A      B
        1      B      C
    """
    check_missing_option(missing_genes)
    what = 'GRN'
    cols = ('source', 'target')
    frame = _load(source, what)
    if frame is not None:
        frame = _rename(frame, [('source', SOURCE_ALIASES, source_key),
                                ('target', TARGET_ALIASES, target_key),
                                ('cell_type', TYPE_ALIASES, cell_type_key)],
                        what, required=2)
    frame = as_pair_frame(source if frame is None else frame, cols, what,
                          extra=('cell_type', ))
    for c in cols:
        frame[c] = frame[c].str.strip()
    if 'cell_type' in frame.columns and not pd.api.types.is_numeric_dtype(
            frame['cell_type']):
        given = frame['cell_type']
        frame['cell_type'] = given.where(given.notna(), '').astype(str).str.strip()
    if genes is not None and len(frame):
        gene_index = {str(g): i for i, g in enumerate(genes)}
        with warnings.catch_warnings():
            if missing_genes == 'ignore':
                warnings.simplefilter('ignore')
            frame = map_genes(frame, cols, gene_index, what,
                              'raise' if missing_genes == 'raise' else 'drop',
                              len(gene_index))
        frame = frame.drop(columns=[c + '_index' for c in cols])
    return frame.reset_index(drop=True)


def builtin_lr_pairs(genes: Optional[Sequence[str]] = None,
                     missing_genes: str = 'ignore') -> pd.DataFrame:
    r"""The small ligand -> receptor table shipped with torch_staged, for the
    simulator :func:`torch_staged.sim.simulate_tissue`.

    It lists the pairs ``(L0, R0), .., (L9, R9)`` of the simulator's gene naming
    (ligand ``Li`` drives receptor ``Ri``; which of them are true couplings and
    which decoys is part of each simulation's ground truth). It is read from a
    CSV file inside the package; no network access.

    Args:
        genes (list of str, optional): The gene panel; pairs outside it are
            dropped according to :obj:`missing_genes`. (default: :obj:`None`)
        missing_genes (str, optional): ``'ignore'`` (drop silently: a simulation
            with fewer pairs uses a prefix of the table), ``'drop'`` (with a
            warning) or ``'raise'``. (default: :obj:`'ignore'`)

    Returns:
        A DataFrame as :func:`read_lr_pairs` returns.

    Example:
        >>> from torch_staged.io import builtin_lr_pairs
        >>> table = builtin_lr_pairs(genes=['L0', 'L1', 'R0', 'R1', 'G0'])
        >>> table[['ligand', 'receptor']]
          ligand receptor
        0     L0       R0
        1     L1       R1
    """
    path = resources.files('torch_staged.io').joinpath(BUILTIN_FILE)
    with resources.as_file(path) as file:
        return read_lr_pairs(file, genes=genes, missing_genes=missing_genes)


def liana_lr_pairs(resource_name: str = 'consensus',
                   genes: Optional[Sequence[str]] = None,
                   missing_genes: str = 'ignore') -> pd.DataFrame:
    r"""A ligand -> receptor resource shipped inside the `liana
    <https://github.com/saezlab/liana-py>`_ package (its consensus table by
    default), with heteromeric complexes expanded by :func:`read_lr_pairs`.

    liana is an optional dependency: ``pip install 'torch_staged[liana]'``. The
    table is read from the installed package (``liana.resource.select_resource``);
    no network access.

    Args:
        resource_name (str, optional): A resource of
            ``liana.resource.show_resources()``, e.g. ``'consensus'`` (human) or
            ``'mouseconsensus'``. (default: :obj:`'consensus'`)
        genes (list of str, optional): The gene panel; pairs outside it are
            dropped according to :obj:`missing_genes`. (default: :obj:`None`)
        missing_genes (str, optional): ``'ignore'`` (a resource names thousands
            of genes outside any panel), ``'drop'`` (with a warning) or
            ``'raise'``. (default: :obj:`'ignore'`)

    Returns:
        A DataFrame as :func:`read_lr_pairs` returns.

    Raises:
        ImportError: If liana is not installed.

    Example:
        >>> from torch_staged.io import liana_lr_pairs
        >>> pairs = liana_lr_pairs(genes=adata.var_names)  # doctest: +SKIP
    """
    try:
        from liana.resource import select_resource
    except ImportError as err:
        raise ImportError(
            "liana_lr_pairs() needs the optional package 'liana', which is not "
            "installed (or failed to import: "
            f"{err}). Install it with: pip install 'torch_staged[liana]'") from None
    table = select_resource(resource_name)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"liana.resource.select_resource({resource_name!r}) returned "
                        f"{type(table).__name__}, not a DataFrame")
    return read_lr_pairs(table, genes=genes, missing_genes=missing_genes)


#: The ligand -> receptor tables shipped inside commot (database -> (folder,
#: file pattern, species)).
COMMOT_DATABASES = {
    'CellChat': ('CellChat', 'CellChatDB.ligrec.{}.csv', ('human', 'mouse', 'zebrafish')),
    'CellPhoneDB_v4.0': ('CellPhoneDB_v4.0', 'CellPhoneDBv4.0.{}.csv', ('human', 'mouse')),
}
COMMOT_COLUMNS = ('ligand', 'receptor', 'pathway', 'signaling_type')


def _commot_file(database: str, species: str) -> str:
    """The path of one of commot's tables, found without importing commot
    (its import pulls in scanpy and plotting libraries).
    """
    import importlib.util
    if database not in COMMOT_DATABASES:
        raise ValueError(f"'database' must be one of {list(COMMOT_DATABASES)} (got "
                         f"{database!r})")
    folder, pattern, species_ok = COMMOT_DATABASES[database]
    if species not in species_ok:
        raise ValueError(f"{database} ships the species {list(species_ok)} (got "
                         f"{species!r})")
    spec = importlib.util.find_spec('commot')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("commot_lr_pairs() needs the optional package 'commot', which "
                          "is not installed. Install it with: pip install "
                          "'torch_staged[commot]' (only its data files are read: "
                          "'pip install --no-deps commot' is enough)")
    path = os.path.join(list(spec.submodule_search_locations)[0], 'preprocessing',
                        '_data', 'LRdatabase', folder, pattern.format(species))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The installed commot has no {database} table for "
                                f"{species} ({path}); reinstall commot")
    return path


def commot_lr_pairs(database: str = 'CellChat', species: str = 'human',
                    signaling_type: Optional[str] = None,
                    genes: Optional[Sequence[str]] = None,
                    missing_genes: str = 'ignore') -> pd.DataFrame:
    r"""CellChatDB (Jin et al. 2021) or CellPhoneDB v4.0 (Efremova et al. 2020)
    as shipped inside `commot <https://github.com/zcang/COMMOT>`_ (Cang et al.
    2023), with heteromeric complexes (``'Tgfbr1_Tgfbr2'``) expanded by
    :func:`read_lr_pairs`.

    commot is an optional dependency: ``pip install 'torch_staged[commot]'``
    (``pip install --no-deps commot`` suffices: only its CSV files are read,
    commot itself is never imported). No network access.

    Args:
        database (str, optional): ``'CellChat'`` or ``'CellPhoneDB_v4.0'``.
            (default: :obj:`'CellChat'`)
        species (str, optional): ``'human'``, ``'mouse'`` (both databases) or
            ``'zebrafish'`` (CellChat). Gene symbols are the species' own
            (``TGFB1`` / ``Tgfb1``). (default: :obj:`'human'`)
        signaling_type (str, optional): Keep one kind of pair:
            ``'Secreted Signaling'``, ``'Cell-Cell Contact'`` or
            ``'ECM-Receptor'`` (CellChat only); :obj:`None` keeps all.
            (default: :obj:`None`)
        genes (list of str, optional): The gene panel (see
            :func:`read_lr_pairs`). (default: :obj:`None`)
        missing_genes (str, optional): ``'ignore'``, ``'drop'`` or ``'raise'``
            for pairs outside the panel. (default: :obj:`'ignore'`)

    Returns:
        A DataFrame as :func:`read_lr_pairs` returns, with the ``pathway`` and
        ``signaling_type`` columns of the database.

    Raises:
        ImportError: If commot is not installed.

    Example:
        >>> from torch_staged.io import commot_lr_pairs
        >>> pairs = commot_lr_pairs('CellChat', 'mouse', genes=adata.var_names)  # doctest: +SKIP
    """
    path = _commot_file(database, species)
    table = pd.read_csv(path, index_col=0)
    if table.shape[1] != len(COMMOT_COLUMNS):
        raise ValueError(f"{path} has {table.shape[1]} columns, expected "
                         f"{len(COMMOT_COLUMNS)} (ligand, receptor, pathway, type)")
    table.columns = list(COMMOT_COLUMNS)
    if signaling_type is not None:
        kinds = sorted(table['signaling_type'].dropna().unique().tolist())
        if signaling_type not in kinds:
            raise ValueError(f"'signaling_type' must be one of {kinds} for {database} "
                             f"(got {signaling_type!r})")
        table = table[table['signaling_type'] == signaling_type]
    return read_lr_pairs(table.reset_index(drop=True), genes=genes,
                         missing_genes=missing_genes)
