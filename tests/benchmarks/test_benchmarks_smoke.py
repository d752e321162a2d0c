"""The benchmark scripts run end to end in their quick modes (no timing assertions)."""
import importlib.util
import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), '..', '..', 'benchmarks')


def _load(name):
    sys.path.insert(0, os.path.abspath(BENCH))
    spec = importlib.util.spec_from_file_location(
        f'bench_{name}', os.path.join(BENCH, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_scaling_quick(tmp_path):
    out = tmp_path / 'scaling.json'
    records = _load('scaling').main(['--quick', '--json', str(out)])
    assert [(r['cells'], r['mode']) for r in records] == [
        (100, 'whole'), (100, 'tiles'), (200, 'whole'), (200, 'tiles')]
    for r in records:
        assert 'skipped' not in r, r
        assert r['seconds'] > 0 and r['us_per_cell'] > 0 and r['peak_mem_bytes'] >= 0
    assert all(r['tiles'] > 1 for r in records if r['mode'] == 'tiles')
    saved = json.loads(out.read_text())
    assert saved['machine']['torch'] and len(saved['records']) == 4


@pytest.mark.slow
def test_research_code_quick():
    records = _load('research_code').main(['--quick', '--threads', '1'])
    assert [r['cells'] for r in records] == [20, 40]
    for r in records:
        assert r['per_cell_graph'] > 0 and r['staged'] > 0 and r['staged_fwd_bwd'] > 0
        assert r['speedup_vs_per_cell_graph'] > 0


@pytest.mark.slow
def test_train_epoch_quick():
    records = _load('train').main(['--cells', '100', '--tile-size', '6', '--times', '3',
                                   '--threads', '1', '--in-process'])
    (rec,) = records
    assert 'skipped' not in rec, rec
    assert rec['tiles'] > 1 and rec['cells_per_second'] > 0 and rec['nfe'] > 0
