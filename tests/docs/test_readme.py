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
