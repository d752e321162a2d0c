import sys
import types
import warnings

import pandas as pd
import pytest

from torch_staged.io import builtin_lr_pairs, liana_lr_pairs, read_grn, read_lr_pairs

PANEL = ['TGFB1', 'TGFBR1', 'TGFBR2', 'CXCL12', 'CXCR4', 'IL7', 'IL7R']


def test_lr_column_aliases_files_and_no_mutation(tmp_path):
    table = pd.DataFrame({'Source_GeneSymbol': ['CXCL12', 'IL7'],
                          'target_genesymbol': ['CXCR4', 'IL7R'], 'score': [1.0, 0.5]})
    before = table.copy()
    out = read_lr_pairs(table)
    pd.testing.assert_frame_equal(table, before)
    assert list(out.columns) == ['ligand', 'receptor', 'ligand_complex',
                                 'receptor_complex', 'score']
    assert out[['ligand', 'receptor']].values.tolist() == [['CXCL12', 'CXCR4'],
                                                           ['IL7', 'IL7R']]
    table.to_csv(tmp_path / 'pairs.csv', index=False)
    table.to_csv(tmp_path / 'pairs.tsv', index=False, sep='\t')
    for path in ('pairs.csv', 'pairs.tsv'):
        pd.testing.assert_frame_equal(read_lr_pairs(tmp_path / path), out)
    listed = read_lr_pairs([('CXCL12', 'CXCR4'), ('IL7', 'IL7R')])
    pd.testing.assert_frame_equal(listed, out.drop(columns='score'))
    named = read_lr_pairs(table.rename(columns={'Source_GeneSymbol': 'a',
                                                'target_genesymbol': 'b'}),
                          ligand_key='a', receptor_key='b')
    assert named['ligand'].tolist() == ['CXCL12', 'IL7']
    with pytest.raises(ValueError, match="needs a 'receptor' column"):
        read_lr_pairs(pd.DataFrame({'ligand': ['A'], 'other': ['B']}))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        read_lr_pairs(tmp_path / 'missing.csv')


def test_heteromeric_receptors_are_expanded():
    table = pd.DataFrame({'ligand': ['TGFB1', 'CXCL12', 'IL12A_IL12B'],
                          'receptor': ['TGFBR1_TGFBR2', 'CXCR4', 'IL12RB1']})
    out = read_lr_pairs(table)
    assert out[['ligand', 'receptor', 'ligand_complex', 'receptor_complex']
               ].values.tolist() == [
        ['TGFB1', 'TGFBR1', 'TGFB1', 'TGFBR1_TGFBR2'],
        ['TGFB1', 'TGFBR2', 'TGFB1', 'TGFBR1_TGFBR2'],
        ['CXCL12', 'CXCR4', 'CXCL12', 'CXCR4'],
        ['IL12A', 'IL12RB1', 'IL12A_IL12B', 'IL12RB1'],
        ['IL12B', 'IL12RB1', 'IL12A_IL12B', 'IL12RB1']]
    assert len(read_lr_pairs(table, complex_sep=None)) == 3


def test_complexes_need_all_subunits_in_the_panel():
    table = pd.DataFrame({'ligand': ['TGFB1', 'CXCL12'],
                          'receptor': ['TGFBR1_TGFBR3', 'CXCR4']})
    with pytest.raises(ValueError, match=r"TGFBR3.*incomplete complex.*TGFBR1_TGFBR3"):
        read_lr_pairs(table, genes=PANEL)
    with pytest.warns(UserWarning, match='1 of 2 rows.*TGFBR3'):
        out = read_lr_pairs(table, genes=PANEL, missing_genes='drop')
    assert out[['ligand', 'receptor']].values.tolist() == [['CXCL12', 'CXCR4']]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert len(read_lr_pairs(table, genes=PANEL, missing_genes='ignore')) == 1
    # a name that is itself a gene of the panel is not split
    out = read_lr_pairs([('A_B', 'C')], genes=['A_B', 'C'])
    assert out[['ligand', 'receptor']].values.tolist() == [['A_B', 'C']]


def test_grn_aliases_cell_types_and_missing_genes(tmp_path):
    table = pd.DataFrame({'TF': ['TGFBR1', 'CXCR4', 'XYZ'],
                          'target_gene': ['IL7', 'IL7R', 'IL7'],
                          'celltype': ['A', None, 'B'], 'sign': [1, -1, 1]})
    with pytest.raises(ValueError, match=r"1 of 3 rows of the GRN.*XYZ"):
        read_grn(table, genes=PANEL)
    with pytest.warns(UserWarning, match='XYZ'):
        out = read_grn(table, genes=PANEL, missing_genes='drop')
    assert list(out.columns) == ['source', 'target', 'cell_type', 'sign']
    assert out[['source', 'target']].values.tolist() == [['TGFBR1', 'IL7'],
                                                         ['CXCR4', 'IL7R']]
    table.to_csv(tmp_path / 'grn.csv', index=False)
    from_file = read_grn(tmp_path / 'grn.csv', genes=PANEL, missing_genes='ignore')
    pd.testing.assert_frame_equal(from_file, out)
    assert read_grn([('A', 'B', 'T0')]).values.tolist() == [['A', 'B', 'T0']]


def test_builtin_table_fits_the_simulator():
    from torch_staged.sim import simulate_tissue
    table = builtin_lr_pairs()
    assert len(table) == 10 and table['ligand'].tolist()[:2] == ['L0', 'L1']
    adata = simulate_tissue(30, times=[0.0, 1.0], seed=0)
    pairs = builtin_lr_pairs(genes=list(adata.var_names))
    expected = adata.uns['lr_pairs']
    assert pairs[['ligand', 'receptor']].values.tolist() == expected.values.tolist()


def _fake_liana(monkeypatch, table):
    calls = []
    liana = types.ModuleType('liana')
    resource = types.ModuleType('liana.resource')

    def select_resource(name):
        calls.append(name)
        return table.copy()

    resource.select_resource = select_resource
    liana.resource = resource
    monkeypatch.setitem(sys.modules, 'liana', liana)
    monkeypatch.setitem(sys.modules, 'liana.resource', resource)
    return calls


def test_liana_loader_with_a_fake_module(monkeypatch):
    table = pd.DataFrame({'ligand': ['TGFB1', 'CXCL12', 'Foo'],
                          'receptor': ['TGFBR1_TGFBR2', 'CXCR4', 'Bar']})
    calls = _fake_liana(monkeypatch, table)
    out = liana_lr_pairs(genes=PANEL)
    assert calls == ['consensus']
    assert out[['ligand', 'receptor']].values.tolist() == [
        ['TGFB1', 'TGFBR1'], ['TGFB1', 'TGFBR2'], ['CXCL12', 'CXCR4']]
    liana_lr_pairs('mouseconsensus')
    assert calls[-1] == 'mouseconsensus'


def test_liana_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, 'liana', None)  # import liana -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'torch_staged\[liana\]'"):
        liana_lr_pairs()


def test_liana_real_resource():
    pytest.importorskip('liana')
    out = liana_lr_pairs()
    assert len(out) > 100 and {'ligand', 'receptor', 'receptor_complex'} <= set(out)
    assert not out['receptor'].str.contains('_').any()


def _fake_commot(tmp_path, monkeypatch, rows):
    """A directory laid out like the installed commot package (its CSV files
    only; commot's code is never imported)."""
    root = tmp_path / 'site' / 'commot'
    data = root / 'preprocessing' / '_data' / 'LRdatabase' / 'CellChat'
    data.mkdir(parents=True)
    (root / '__init__.py').write_text('raise ImportError("commot must not be imported")\n')
    pd.DataFrame(rows).to_csv(data / 'CellChatDB.ligrec.mouse.csv')
    monkeypatch.syspath_prepend(str(tmp_path / 'site'))
    monkeypatch.delitem(sys.modules, 'commot', raising=False)


def test_commot_loader_reads_the_shipped_layout(tmp_path, monkeypatch):
    from torch_staged.io import commot_lr_pairs
    _fake_commot(tmp_path, monkeypatch, [
        ['Tgfb1', 'Tgfbr1_Tgfbr2', 'TGFb', 'Secreted Signaling'],
        ['Cxcl12', 'Cxcr4', 'CXCL', 'Secreted Signaling'],
        ['Jag1', 'Notch1', 'NOTCH', 'Cell-Cell Contact'],
        ['Foo', 'Bar', 'X', 'Secreted Signaling']])
    panel = ['Tgfb1', 'Tgfbr1', 'Tgfbr2', 'Cxcl12', 'Cxcr4', 'Jag1', 'Notch1']
    out = commot_lr_pairs('CellChat', 'mouse', genes=panel)
    assert out[['ligand', 'receptor']].values.tolist() == [
        ['Tgfb1', 'Tgfbr1'], ['Tgfb1', 'Tgfbr2'], ['Cxcl12', 'Cxcr4'], ['Jag1', 'Notch1']]
    assert out['receptor_complex'].tolist()[:2] == ['Tgfbr1_Tgfbr2'] * 2
    assert out['pathway'].tolist() == ['TGFb', 'TGFb', 'CXCL', 'NOTCH']
    contact = commot_lr_pairs('CellChat', 'mouse', 'Cell-Cell Contact', genes=panel)
    assert contact[['ligand', 'receptor']].values.tolist() == [['Jag1', 'Notch1']]
    assert 'commot' not in sys.modules
    with pytest.raises(ValueError, match="'signaling_type' must be one of"):
        commot_lr_pairs('CellChat', 'mouse', 'Secreted')
    with pytest.raises(FileNotFoundError, match='no CellChat table for human'):
        commot_lr_pairs('CellChat', 'human')
    with pytest.raises(ValueError, match="'database' must be one of"):
        commot_lr_pairs('CellChatDB')
    with pytest.raises(ValueError, match='ships the species'):
        commot_lr_pairs('CellPhoneDB_v4.0', 'zebrafish')


def test_commot_loader_without_commot(monkeypatch):
    import importlib.util

    from torch_staged.io import commot_lr_pairs
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *args: None)
    with pytest.raises(ImportError, match=r"pip install 'torch_staged\[commot\]'"):
        commot_lr_pairs()


@pytest.mark.skipif(__import__('importlib').util.find_spec('commot') is None,
                    reason="the optional package 'commot' is not installed")
@pytest.mark.parametrize('database, species', [('CellChat', 'human'), ('CellChat', 'mouse'),
                                               ('CellPhoneDB_v4.0', 'human')])
def test_commot_real_files(database, species):
    from torch_staged.io import commot_lr_pairs
    out = commot_lr_pairs(database, species)
    assert len(out) > 1000 and out['ligand'].notna().all()
    tgfb = 'TGFB1' if species == 'human' else 'Tgfb1'
    assert tgfb in set(out['ligand'])
    # heteromeric receptors are expanded to their subunits
    assert (out['receptor_complex'] != out['receptor']).any()
    panel = [tgfb, tgfb.replace('B1', 'BR1').replace('b1', 'br1'),
             tgfb.replace('B1', 'BR2').replace('b1', 'br2')]
    small = commot_lr_pairs(database, species, genes=panel)
    assert set(small['ligand']) == {tgfb} and set(small['receptor']) <= set(panel[1:])


def test_reading_a_read_table_again_is_the_same_and_rechecks_complexes():
    # a table read_lr_pairs wrote (e.g. from liana_lr_pairs or commot_lr_pairs) can be
    # read again, with another panel: complexes are expanded and checked afresh
    from torch_staged.io import panel_report
    table = pd.DataFrame({'ligand': ['TGFB1', 'CXCL12', 'IL7'],
                          'receptor': ['TGFBR1_TGFBR2', 'CXCR4', 'IL7R'],
                          'pathway': ['TGFb', 'CXCL', 'IL7']})
    once = read_lr_pairs(table)
    before = once.copy()
    pd.testing.assert_frame_equal(read_lr_pairs(once), once)
    pd.testing.assert_frame_equal(once, before)  # the user's table is not modified
    panel = ['TGFB1', 'TGFBR1', 'CXCL12', 'CXCR4']  # TGFBR2 missing
    again = read_lr_pairs(once, genes=panel, missing_genes='ignore')
    assert again[['ligand', 'receptor']].values.tolist() == [['CXCL12', 'CXCR4']]
    report = panel_report(PANEL, lr_pairs={'read': once})
    assert report['surviving'].tolist() == [4]
    assert read_grn(read_grn(pd.DataFrame({'source': ['A'], 'target': ['B']}))).shape[0] == 1
