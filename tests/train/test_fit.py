import json
import pickle

import numpy as np
import pytest
import torch

from torch_staged.data import tile
from torch_staged.models import STAGED, IntegrationError
from torch_staged.testing import linear_coupled_tissue, random_tissue
from torch_staged.train import fit, load_checkpoint, load_model


def test_learns_a_linear_coupled_system():
    torch.manual_seed(0)
    data, X, t = linear_coupled_tissue()
    model = STAGED(3, 2, hidden_channels=8, mlp_channels=16)
    result = fit(model, data, X, t, epochs=40, lr=0.02, holdout_size=3, patience=None,
                 cell_order='graph', progress=False)
    assert len(result.history) == 40
    with torch.no_grad():
        pred = model(data, t[7:], X[7])[1:]
    truth = X[8:]
    mse = float(((pred - truth) ** 2).mean())
    r2 = 1 - mse / float(((truth - truth.mean((0, 1))) ** 2).mean())
    persistence = float(((X[7] - truth) ** 2).mean())  # predict "no change"
    assert r2 > 0.95, r2
    assert mse < 0.1 * persistence
    assert result.best_val_loss == pytest.approx(mse, rel=1e-3)


def _small_problem(seed=0):
    torch.manual_seed(seed)
    data = random_tissue(16, 3, seed=seed)
    teacher = STAGED(3, 3, hidden_channels=4, mlp_channels=8)
    t = torch.linspace(0, 1, 5)
    with torch.no_grad():
        X = teacher(data, t)
    return data, X, t


def _student():
    torch.manual_seed(1)
    return STAGED(3, 3, hidden_channels=4, mlp_channels=8, method='rk4',
                  options={'step_size': 0.05})


@pytest.mark.parametrize('loss', ['one_step', 'window', 'rollout'])
def test_loss_modes_and_history_file(tmp_path, loss):
    data, X, t = _small_problem()
    model = _student()
    result = fit(model, data, X, t, loss=loss, window=2, epochs=3, cell_order='graph',
                 progress=False, history_path=tmp_path / 'history.json')
    assert [h['epoch'] for h in result.history] == [0, 1, 2]
    assert all(np.isfinite(h['train_loss']) and h['nfe'] > 0 for h in result.history)
    saved = json.loads((tmp_path / 'history.json').read_text())
    assert saved['history'] == json.loads(json.dumps(result.history))
    assert saved['fit_config']['loss'] == loss
    assert 'FitResult(epochs=3' in repr(result)


def test_checkpoint_round_trip_and_bitwise_resume(tmp_path):
    data, X, t = _small_problem()
    straight = _student()
    fit(straight, data, X, t, epochs=4, cell_order='graph', progress=False,
        restore_best=False, seed=3)

    first = _student()
    ckpt = tmp_path / 'run' / 'ckpt.pt'
    fit(first, data, X, t, epochs=2, cell_order='graph', progress=False,
        restore_best=False, seed=3, checkpoint=ckpt)
    assert ckpt.exists() and not list(ckpt.parent.glob('.ckpt-*'))  # atomic
    state = torch.load(ckpt, weights_only=True)  # plain tensors and values only
    assert state['epoch'] == 1 and len(state['history']) == 2
    assert state['config'] == json.loads(json.dumps(first.config))

    resumed = _student()
    result = fit(resumed, data, X, t, epochs=4, cell_order='graph', progress=False,
                 restore_best=False, seed=3, resume=ckpt)
    assert len(result.history) == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    model, loaded = load_model(ckpt)
    assert isinstance(model, STAGED) and loaded['epoch'] == 1


def test_checkpoint_refuses_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ('this must never run', ))

    path = tmp_path / 'evil.pt'
    with open(path, 'wb') as f:
        pickle.dump({'format': 'torch_staged.checkpoint/1', 'x': Payload()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    torch.save({'something': 1}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='not a torch_staged checkpoint'):
        load_checkpoint(tmp_path / 'other.pt')
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'missing.pt')


def test_resume_with_another_config_fails(tmp_path):
    data, X, t = _small_problem()
    fit(_student(), data, X, t, epochs=1, cell_order='graph', progress=False,
        checkpoint=tmp_path / 'c.pt')
    other = STAGED(3, 3, hidden_channels=8)
    with pytest.raises(ValueError, match='another model config'):
        fit(other, data, X, t, epochs=2, cell_order='graph', progress=False,
            resume=tmp_path / 'c.pt')


def test_nan_guard_names_the_step():
    data, X, t = _small_problem()
    model = _student()
    with torch.no_grad():
        model.func.bias2.fill_(1e38)
    with pytest.raises(IntegrationError, match=r'Epoch 0, step 0 .*NaN/Inf'):
        fit(model, data, X, t, epochs=1, cell_order='graph', progress=False)


def test_fit_over_tiles_with_halo():
    data, X, t = _small_problem()
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    tiles = tile(data, tile_size=2.0)
    assert len(tiles) > 1 and any(bool(s['cell'].clamped.any()) for s in tiles)
    model = _student()
    result = fit(model, tiles, epochs=2, tiles_per_step=2, progress=False)
    assert all(np.isfinite(h['train_loss']) for h in result.history)


def test_holdout_cells_and_input_order():
    data, X, t = _small_problem()
    X_input = data.cells_to_input(X, dim=1)
    a, b = _student(), _student()
    ra = fit(a, data, X_input, t, epochs=2, holdout='cells', holdout_size=0.3,
             progress=False)
    rb = fit(b, data, X, t, epochs=2, holdout='cells', holdout_size=0.3,
             cell_order='graph', progress=False)
    assert ra.history[-1]['val_loss'] == rb.history[-1]['val_loss']


@pytest.mark.parametrize('kwargs,match', [
    (dict(loss='mae'), "'loss' must be one of"),
    (dict(holdout='genes'), "'holdout' must be one of"),
    (dict(holdout_size=10), 'holdout_size'),
    (dict(holdout='cells', holdout_size=1.5), 'fraction'),
    (dict(epochs=0), "'epochs' must be a positive integer"),
    (dict(lr=-1.0), "'lr' must be positive"),
    (dict(scheduler='step'), "'scheduler' must be one of"),
])
def test_bad_arguments(kwargs, match):
    data, X, t = _small_problem()
    with pytest.raises(ValueError, match=match):
        fit(_student(), data, X, t, cell_order='graph', progress=False, **kwargs)


def test_bad_trajectories():
    data, X, t = _small_problem()
    with pytest.raises(ValueError, match=r"'X' must have shape \[T, num_cells, num_genes\]"):
        fit(_student(), data, X[:, :5], t, progress=False)
    with pytest.raises(ValueError, match='strictly increasing'):
        fit(_student(), data, X, t.flip(0), progress=False)
    bad = X.clone()
    bad[1, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='NaN or Inf'):
        fit(_student(), data, bad, t, progress=False)
    with pytest.raises(ValueError, match='No trajectories'):
        fit(_student(), data, progress=False)
