"""benchmarks/science.py --quick runs every dataset and model end to end."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(__file__), '..', '..', 'benchmarks')


def _load(name):
    sys.path.insert(0, os.path.abspath(BENCH))
    spec = importlib.util.spec_from_file_location(f'bench_{name}',
                                                  os.path.join(BENCH, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_science_quick(tmp_path, capsys):
    science = _load('science')
    out = tmp_path / 'science.json'
    records = science.main(['--quick', '--jobs', '1', '--json', str(out)])
    assert json.loads(out.read_text()) == records
    datasets = {r['dataset'] for r in records}
    assert datasets == set(science.DATASETS) and len(records) == 4 * len(science.MODELS)
    for r in records:
        assert set(science.FIELDS) <= set(r), r
        assert r['persistence_mse'] > 0 and r['fit_seconds'] >= 0
    by = {(r['dataset'], r['model']): r for r in records}
    for dataset in datasets:
        per = by[(dataset, 'persistence')]
        assert per['heldout_mse'] == pytest.approx(per['persistence_mse'])
        assert by[(dataset, 'staged')]['intra_auroc'] is not None
        assert by[(dataset, 'forest')]['intra_sign_accuracy'] is None
    assert by[('krumsiek11', 'ridge')]['inter_auroc'] is None  # no L-R pairs
    assert by[('lateral_inhibition', 'ridge')]['true_pair_rank'] in range(1, 8)
    assert by[('lateral_inhibition', 'no_signalling')]['inter_auroc'] is None
    table = capsys.readouterr().out
    assert 'krumsiek11_half_false' in table and 'GRN AUROC' in table


def test_science_passes_extra_fit_and_model_kwargs_to_staged():
    # the flags reach fit() and STAGED(): an invalid value of each is refused
    # by them, with their own messages
    science = _load('science')
    base = ['--quick', '--jobs', '1', '--datasets', 'krumsiek11', '--models', 'staged']
    with pytest.raises(ValueError, match="'holdout'"):
        science.main(base + ['--fit-kwargs', '{"holdout": "bogus"}'])
    with pytest.raises(ValueError, match="'mlp_channels'"):
        science.main(base + ['--model-kwargs', '{"mlp_channels": 0}'])
    records = science.main(base + ['--fit-kwargs', '{"holdout": null}',
                                   '--model-kwargs', '{"mlp_channels": 4}'])
    assert [r['model'] for r in records] == ['staged']
    assert records[0]['intra_auroc'] is not None


def test_science_restarts_score_the_ensemble():
    # --restarts 2: member k fitted from seed + 100 k, scored on the averaged tables
    science = _load('science')
    from torch_staged._benchmark import fit_staged, make_task, score_tables
    from torch_staged.interpret import interaction_tables
    base = ['--quick', '--jobs', '1', '--datasets', 'krumsiek11', '--models', 'staged']
    with pytest.raises(SystemExit, match='--restarts must be >= 1'):
        science.main(base + ['--restarts', '0'])
    (record, ) = science.main(base + ['--restarts', '2'])
    task = make_task('krumsiek11', 0, quick=True)
    members = [fit_staged(task, 'staged', seed, epochs=2)[0] for seed in (0, 100)]
    intra, _ = interaction_tables(members, task.data, task.X[:task.last + 1])
    expected = score_tables(intra, None, task.truth, signed=True)
    assert record['intra_auroc'] == pytest.approx(expected['intra_auroc'])
    assert record['restarts'] == 2
    single, _ = interaction_tables(members[0], task.data, task.X[:task.last + 1])
    both = single.merge(intra, on=['cell_type', 'source', 'target'])
    assert not np.allclose(both['abs_score_x'], both['abs_score_y'])  # not member 0 alone
