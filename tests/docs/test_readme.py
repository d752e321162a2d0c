import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / 'README.md'


def test_readme_quickstart_runs():
    text = README.read_text()
    blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
    assert blocks, 'README has no python code block'
    namespace = {}
    exec(compile(blocks[0], 'README.md quickstart', 'exec'), namespace)
    assert len(namespace['result'].history) == 2
    assert {'ligand', 'receptor', 'sender_type', 'receiver_type'} <= set(
        namespace['inter'].columns)
    assert 'staged_pred' in namespace['adata_out'].layers
    # the ensemble snippet that follows, in the same session
    ensemble = next(b for b in blocks[1:] if 'members' in b)
    exec(compile(ensemble, 'README.md ensemble', 'exec'), namespace)
    assert len(namespace['members']) == 3
    for table in (namespace['intra'], namespace['inter']):
        assert 'abs_score_sd' in table.columns and (table['abs_score_sd'] >= 0).all()
    assert (namespace['intra']['abs_score_sd'] > 0).any()  # the fits differ
    assert namespace['adata_ens'].uns['staged']['params']['ensemble_size'] == 3
