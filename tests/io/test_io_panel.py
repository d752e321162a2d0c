"""Panel-aware prior report, and prior files that cannot be read."""
import pandas as pd
import pytest

from torch_staged.io import panel_report, read_grn, read_lr_pairs, to_panel

HUMAN = pd.DataFrame({'ligand': ['TGFB1', 'CXCL12', 'WNT5A', 'IL6'],
                      'receptor': ['TGFBR1_TGFBR2', 'CXCR4', 'FZD5', 'IL6R']})
MOUSE_PANEL = ['Tgfb1', 'Tgfbr1', 'Tgfbr2', 'Cxcl12', 'Cxcr4', 'Actb']
GRN = pd.DataFrame({'source': ['Tgfb1', 'Cxcr4', 'Myc'],
                    'target': ['Actb', 'Tgfbr1', 'Actb']})


def test_report_counts_surviving_pairs_per_resource():
    report = panel_report(['TGFB1', 'TGFBR1', 'TGFBR2', 'IL6', 'IL6R', 'G'],
                          lr_pairs={'human': HUMAN}, grn={'mine': GRN}, min_pairs=0)
    lr = report.set_index('resource').loc['human']
    assert (lr['kind'], lr['rows'], lr['surviving']) == ('lr_pairs', 4, 3)
    grn = report.set_index('resource').loc['mine']
    assert (grn['kind'], grn['rows'], grn['surviving']) == ('grn', 3, 0)


def test_case_insensitive_matching_maps_human_to_mouse_symbols():
    with pytest.raises(ValueError, match=r"Only 0 of the 4 .* 'human' survive the gene "
                                         r"panel of 6 genes.*match='case'"):
        panel_report(MOUSE_PANEL, lr_pairs={'human': HUMAN})
    report = panel_report(MOUSE_PANEL, lr_pairs={'human': HUMAN}, grn=GRN,
                          match='case')
    assert report['surviving'].tolist() == [3, 2]  # TGFB1 -> 2 subunits, CXCL12
    mapped = to_panel(HUMAN, MOUSE_PANEL, ['ligand', 'receptor'])
    assert mapped['receptor'].tolist()[0] == 'Tgfbr1_Tgfbr2'
    assert HUMAN['ligand'].tolist()[0] == 'TGFB1'  # the user's table is untouched
    pairs = read_lr_pairs(mapped, genes=MOUSE_PANEL, missing_genes='ignore')
    assert len(pairs) == 3


def test_panel_without_any_pair_says_what_to_do():
    with pytest.raises(ValueError, match='keep the resource.s ligand and receptor genes'
                                         '.*lr_pairs=None'):
        panel_report(['A', 'B'], lr_pairs=HUMAN)
    with pytest.raises(ValueError, match="'match' must be one of"):
        panel_report(['A'], lr_pairs=HUMAN, match='fuzzy')


def test_empty_prior_files_name_the_file(tmp_path):
    empty = tmp_path / 'grn.csv'
    empty.write_text('')
    with pytest.raises(ValueError, match=r"GRN table file '.*grn\.csv' is empty"):
        read_grn(empty)
    lr = tmp_path / 'pairs.csv'
    lr.write_text('')
    with pytest.raises(ValueError, match=r"ligand -> receptor table file '.*pairs\.csv' "
                                         r"is empty"):
        read_lr_pairs(lr)
    header = tmp_path / 'header.csv'
    header.write_text('ligand,receptor\n')
    with pytest.raises(ValueError, match=r"table \(file '.*header\.csv'\) has no rows"):
        read_lr_pairs(header)
