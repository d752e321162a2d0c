import json
import pickle

import numpy as np
import pytest
import torch

from torch_staged.data import tile
from torch_staged.models import STAGED, IntegrationError
from torch_staged.testing import linear_coupled_tissue, random_tissue
from torch_staged.train import (
    CheckpointError,
    DivergenceError,
    fit,
    load_checkpoint,
    load_model,
)
from torch_staged.train._checkpoint import save_checkpoint


@pytest.mark.parametrize('kwargs', [
    dict(loss='one_step', batch_intervals=False, epochs=40),  # 7 solves per epoch
    dict(loss='one_step', epochs=200),  # the 7 intervals as one stacked solve
    dict(epochs=300),  # the default: gradient matching
])
def test_learns_a_linear_coupled_system(kwargs):
    torch.manual_seed(0)
    data, X, t = linear_coupled_tissue()
    model = STAGED(3, 2, hidden_channels=8, mlp_channels=16)
    # unweighted losses, so that the held-out loss is the MSE computed below
    result = fit(model, data, X, t, lr=0.02, holdout='time', holdout_size=3,
                 cell_order='graph',
                 progress=False, gene_weights=None, **kwargs)
    assert len(result.history) == kwargs['epochs']
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


@pytest.mark.parametrize('loss', ['derivative', 'one_step', 'window', 'rollout'])
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


@pytest.mark.parametrize('loss', ['derivative', 'one_step'])
def test_stacked_first_loss_is_the_mean_over_intervals(loss):
    # the first training loss of a stacked job (one solve / one evaluation for
    # all intervals) equals the mean of the per-interval losses, written out
    data, X, t = _small_problem()
    model = _student().double()
    Xd, td = X.double(), t.double()
    with torch.no_grad():
        per = []
        for k in range(3):  # holdout_size=1 of 5 times: intervals 0..2
            if loss == 'derivative':
                mid = model.initial_state(data, 0.5 * (Xd[k] + Xd[k + 1]))
                pred = model.func.set_graph(data)(td[0], mid)[:, 0].view(16, 3)
                target = (Xd[k + 1] - Xd[k]) / (td[k + 1] - td[k])
            else:
                pred, target = model(data, td[k:k + 2], Xd[k])[-1], Xd[k + 1]
            per.append(float(((pred - target) ** 2).mean()))
    result = fit(model, data, Xd, td, loss=loss, epochs=1, lr=1e-12, holdout='time',
                 cell_order='graph', progress=False, gene_weights=None)
    assert result.history[0]['train_loss'] == pytest.approx(np.mean(per), rel=1e-6)


def test_gene_weights_scale_each_gene_by_its_rate_sd():
    # gene_weights='rate': the first loss is the MSE with every gene's residual
    # divided by the sd of its finite-difference rates (floored at a tenth of
    # the median sd), scaled to mean square weight 1; a [G] tensor is used as is
    data, X, t = _small_problem()
    model = _student().double()
    Xd, td = X.double(), t.double()
    slope = (Xd[1:4] - Xd[:3]) / (td[1:4] - td[:3]).view(-1, 1, 1)  # 3 training intervals
    with torch.no_grad():
        pred = torch.stack([model.func.set_graph(data)(td[0], model.initial_state(
            data, 0.5 * (Xd[k] + Xd[k + 1])))[:, 0].view(16, 3) for k in range(3)])
    sd = slope.reshape(-1, 3).std(0, unbiased=False)
    w = 1.0 / sd.clamp_min(0.1 * sd.median())
    w = w / w.pow(2).mean().sqrt()
    expected = float((((pred - slope) * w) ** 2).mean())
    given = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    expected_given = float((((pred - slope) * given) ** 2).mean())
    for weights, value in (('rate', expected), (given, expected_given)):
        result = fit(_student().double(), data, Xd, td, epochs=1, lr=1e-12,
                     holdout='time', cell_order='graph', progress=False,
                     gene_weights=weights)
        assert result.history[0]['train_loss'] == pytest.approx(value, rel=1e-6)
    with pytest.raises(ValueError, match="'gene_weights' must be one of"):
        fit(_student(), data, X, t, epochs=1, cell_order='graph', progress=False,
            gene_weights='genes')
    with pytest.raises(ValueError, match="must hold 3 positive finite weights"):
        fit(_student(), data, X, t, epochs=1, cell_order='graph', progress=False,
            gene_weights=torch.tensor([1.0, -1.0, 1.0]))


def test_checkpoint_round_trip_and_bitwise_resume(tmp_path):
    # a constant rate: the first 2 epochs of a 4-epoch run are a 2-epoch run
    data, X, t = _small_problem()
    straight = _student()
    fit(straight, data, X, t, epochs=4, cell_order='graph', progress=False,
        restore_best=False, seed=3, scheduler=None)

    first = _student()
    ckpt = tmp_path / 'run' / 'ckpt.pt'
    fit(first, data, X, t, epochs=2, cell_order='graph', progress=False,
        restore_best=False, seed=3, checkpoint=ckpt, scheduler=None)
    assert ckpt.exists() and not list(ckpt.parent.glob('.ckpt-*'))  # atomic
    state = torch.load(ckpt, weights_only=True)  # plain tensors and values only
    assert state['epoch'] == 1 and len(state['history']) == 2
    assert state['config'] == json.loads(json.dumps(first.config))

    resumed = _student()
    result = fit(resumed, data, X, t, epochs=4, cell_order='graph', progress=False,
                 restore_best=False, seed=3, resume=ckpt, scheduler=None)
    assert len(result.history) == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    model, loaded = load_model(ckpt)
    assert isinstance(model, STAGED) and loaded['epoch'] == 1


class _Interrupt(Exception):
    pass


def _interrupt_after(epoch):
    def callback(record):
        if record['epoch'] == epoch:
            raise _Interrupt
    return callback


def test_cosine_schedule_resumes_bitwise_and_follows_a_new_total(tmp_path):
    data, X, t = _small_problem()
    kwargs = dict(cell_order='graph', progress=False, restore_best=False, seed=3,
                  lr=0.02, scheduler='cosine')

    def cosine(epoch, total):  # the rate of epoch `epoch` of `total`
        return 0.02 * 0.5 * (1 + np.cos(np.pi * min(epoch, total) / total))

    straight = _student()
    ref = fit(straight, data, X, t, epochs=4, **kwargs)
    # each record holds its epoch's rate, from lr down towards 0
    assert [r['lr'] for r in ref.history] == pytest.approx(
        [cosine(e, 4) for e in range(4)], abs=1e-12)

    ckpt = tmp_path / 'ckpt.pt'
    with pytest.raises(_Interrupt):  # a 4-epoch run stopped after epoch 2
        fit(_student(), data, X, t, epochs=4, checkpoint=ckpt,
            callback=_interrupt_after(1), **kwargs)
    resumed = _student()
    fit(resumed, data, X, t, epochs=4, resume=ckpt, **kwargs)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    longer = _student()  # resumed with a new total: that total's schedule
    result = fit(longer, data, X, t, epochs=8, resume=ckpt, **kwargs)
    assert len(result.history) == 8
    assert [r['lr'] for r in result.history[2:]] == pytest.approx(
        [cosine(e, 8) for e in range(2, 8)], abs=1e-12)
    assert not torch.equal(longer.func.weight1, resumed.func.weight1)

    # a checkpoint of an earlier version (CosineAnnealingLR's state) resumes too
    state = load_checkpoint(ckpt)
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.02)
    legacy = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    for _ in range(2):
        opt.step()
        legacy.step()
    state['scheduler'] = legacy.state_dict()
    save_checkpoint(ckpt, state)
    again = _student()
    fit(again, data, X, t, epochs=4, resume=ckpt, **kwargs)
    for (name, a), b in zip(straight.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    # a checkpoint of another schedule (the constant rate of earlier defaults)
    # is refused with what to pass, not silently switched to the cosine
    constant = tmp_path / 'constant.pt'
    fit(_student(), data, X, t, epochs=2, checkpoint=constant,
        **dict(kwargs, scheduler=None))
    with pytest.raises(ValueError, match="trained with scheduler=None, not 'cosine': "
                                         "pass scheduler=None"):
        fit(_student(), data, X, t, epochs=4, resume=constant, **kwargs)
    fit(_student(), data, X, t, epochs=4, resume=constant, **dict(kwargs, scheduler=None))


def test_checkpoint_seconds_throttle_the_writes(tmp_path):
    data, X, t = _small_problem()
    seen = []

    def look(record):  # what a reader finds on disk after each epoch
        hist = tmp_path / 'h.json'
        seen.append(len(json.loads(hist.read_text())['history']) if hist.exists() else 0)

    kwargs = dict(cell_order='graph', progress=False, seed=3, epochs=4, callback=look)
    fit(_student(), data, X, t, checkpoint=tmp_path / 'c.pt', history_path=tmp_path / 'h.json',
        checkpoint_seconds=3600, **kwargs)
    assert seen == [0, 0, 0, 4]  # only after the last epoch
    assert load_checkpoint(tmp_path / 'c.pt')['epoch'] == 3
    seen.clear()
    fit(_student(), data, X, t, checkpoint=tmp_path / 'd.pt', history_path=tmp_path / 'h.json',
        checkpoint_seconds=0, **kwargs)
    assert seen == [1, 2, 3, 4]  # every epoch
    for bad in (-1, 'often'):
        with pytest.raises(ValueError, match="'checkpoint_seconds' must be a number"):
            fit(_student(), data, X, t, checkpoint_seconds=bad, **kwargs)


def test_checkpoint_refuses_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ('this must never run', ))

    path = tmp_path / 'evil.pt'
    with open(path, 'wb') as f:
        pickle.dump({'format': 'torch_staged.checkpoint/1', 'x': Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match='refused without running them') as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and 'weights_only' not in str(err.value)
    torch.save({'something': 1}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='not a torch_staged checkpoint'):
        load_checkpoint(tmp_path / 'other.pt')
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'missing.pt')


@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM'])
def test_an_interrupt_during_a_checkpoint_write_waits_for_the_complete_file(
        tmp_path, sig):
    # a signal that arrives inside torch.save used to surface as the zip
    # writer's RuntimeError (CI: 'unexpected pos'), with half a file
    import os
    import signal

    from torch_staged.train._checkpoint import save_checkpoint
    signum = getattr(signal, sig)
    path = tmp_path / 'checkpoint.pt'
    stopped = []  # whether the file was complete when the handler ran
    previous = signal.signal(signal.SIGTERM, lambda s, f: stopped.append(path.exists()))
    # Python's own Ctrl-C handler (a background job may have inherited SIG_IGN)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    state = dict(config={}, model={'w': torch.arange(100_000.)})
    real_save = torch.save

    def save_with_a_signal(obj, f):
        os.kill(os.getpid(), signum)  # delivered mid-write without the deferral
        real_save(obj, f)

    try:
        torch.save = save_with_a_signal
        if sig == 'SIGINT':
            with pytest.raises(KeyboardInterrupt):
                save_checkpoint(path, state)
        else:
            save_checkpoint(path, state)
            assert stopped == [True]  # the handler ran once, after the write
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        torch.save = real_save
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    loaded = load_checkpoint(path)  # the complete file, not a fragment
    assert torch.equal(loaded['model']['w'], state['model']['w'])
    assert [p.name for p in tmp_path.iterdir()] == ['checkpoint.pt']


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
        fit(model, data, X, t, epochs=1, loss='one_step', batch_intervals=False,
            cell_order='graph',
            progress=False)


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
    (dict(holdout='time', holdout_size=10), 'holdout_size'),
    (dict(holdout_size=3), "has no effect without a held-out split"),
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


def _good_checkpoint(path):
    data, X, t = _small_problem()
    fit(_student(), data, X, t, epochs=1, cell_order='graph', progress=False,
        checkpoint=path)
    return path


@pytest.mark.parametrize('damage,match', [
    ('text', 'not a torch_staged checkpoint'),
    ('truncated', 'truncated or corrupt'),
    ('empty', 'is empty'),
    ('directory', 'is a directory'),
    ('no model', 'incomplete'),
])
def test_every_checkpoint_failure_is_one_line_naming_the_file(tmp_path, damage, match):
    path = tmp_path / 'checkpoint.pt'
    if damage == 'text':
        path.write_text('hello, I am not a checkpoint\n')
    elif damage == 'truncated':
        raw = _good_checkpoint(tmp_path / 'good.pt').read_bytes()
        path.write_bytes(raw[:len(raw) // 2])
    elif damage == 'empty':
        path.write_bytes(b'')
    elif damage == 'directory':
        path.mkdir()
    else:
        torch.save({'format': 'torch_staged.checkpoint/1', 'config': {}}, path)
    with pytest.raises(CheckpointError, match=match) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and len(message.splitlines()) == 1
    assert 'weights_only' not in message


def _exploding_loss():
    """MSE that is multiplied by 1e12 once its ``explode`` callback has run."""
    state = dict(on=False)

    def loss_fn(pred, target):
        value = torch.nn.functional.mse_loss(pred, target)
        return value * 1e12 if state['on'] else value

    def explode(record):  # from the end of epoch 0 on
        state['on'] = True
    return loss_fn, explode


def test_divergence_stops_the_fit_with_the_remedy(tmp_path):
    data, X, t = _small_problem()
    ckpt = tmp_path / 'c.pt'
    loss_fn, explode = _exploding_loss()
    with pytest.raises(DivergenceError, match=r"Epoch 1, step 0: the fit diverged.*"
                       r"Lower the learning rate 'lr'") as err:
        fit(_student(), data, X, t, epochs=3, cell_order='graph', progress=False,
            holdout=None, checkpoint=ckpt, loss_fn=loss_fn, callback=explode)
    assert err.value.epoch == 1 and err.value.loss > 1e4 * err.value.scale
    assert len(str(err.value).splitlines()) == 1
    # the checkpoint is that of the last good epoch
    assert torch.load(ckpt, weights_only=True)['epoch'] == 0
    # divergence=None: only non-finite losses stop a fit
    loss_fn, explode = _exploding_loss()
    result = fit(_student(), data, X, t, epochs=2, cell_order='graph', progress=False,
                 holdout=None, divergence=None, loss_fn=loss_fn, callback=explode)
    assert result.history[-1]['train_loss'] > 1e4


def test_held_out_blow_up_is_caught():
    data, X, t = _small_problem()
    on = []

    def loss_fn(pred, target):  # only held-out predictions (no grad) blow up
        value = torch.nn.functional.mse_loss(pred, target)
        blow_up = on and not torch.is_grad_enabled() and bool(pred.abs().sum() > 0)
        return value * 1e12 if blow_up else value
    with pytest.raises(DivergenceError, match=r"^Epoch 1: the fit diverged: held-out"):
        fit(_student(), data, X, t, epochs=3, cell_order='graph', progress=False,
            holdout='time', loss_fn=loss_fn, callback=lambda record: on.append(1),
            val_every=1)


def test_learning_rate_blow_up_is_caught():
    # the failure of the issue: a huge learning rate, a finite but absurd loss
    data, X, t = _small_problem()
    model = STAGED(3, 3, hidden_channels=4, mlp_channels=8)  # dopri5
    with pytest.raises(DivergenceError, match=r"Epoch 0, step 0: the fit diverged: a "
                       r"parameter reached .*Lower the learning rate 'lr'"):
        fit(model, data, X, t, epochs=3, lr=1e8, cell_order='graph', progress=False)


def test_history_file_is_written_every_epoch(tmp_path):
    data, X, t = _small_problem()
    path = tmp_path / 'history.json'
    seen = []

    def callback(record):
        seen.append(len(json.loads(path.read_text())['history']))
    fit(_student(), data, X, t, epochs=3, cell_order='graph', progress=False,
        history_path=path, callback=callback)
    assert seen == [1, 2, 3]
    assert not list(tmp_path.glob('.history-*'))  # written atomically


def test_progress_log_lines_and_label(capsys, caplog):
    data, X, t = _small_problem()
    fit(_student(), data, X, t, epochs=2, cell_order='graph', progress='log',
        desc='STAGED')
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2
    assert lines[0].startswith('STAGED: epoch 1/2 train loss ')
    assert lines[1].startswith('STAGED: epoch 2/2 train loss ')
    fit(_student(), data, X, t, epochs=2, cell_order='graph', progress='bar',
        desc='baseline')
    assert 'baseline:' in capsys.readouterr().err
    with caplog.at_level('INFO', logger='torch_staged.train'):
        fit(_student(), data, X, t, epochs=1, cell_order='graph', progress=False)
    assert capsys.readouterr().err == ''
    assert 'fit: epoch 1/1' in caplog.text
    with pytest.raises(ValueError, match="'progress' must be"):
        fit(_student(), data, X, t, epochs=1, cell_order='graph', progress='loud')


@pytest.mark.parametrize('restore_best', [True, False])
def test_load_model_returns_what_fit_left(tmp_path, restore_best):
    data, X, t = _small_problem()
    model = _student()
    ckpt = tmp_path / 'c.pt'
    result = fit(model, data, X, t, epochs=4, lr=3.0, cell_order='graph',
                 progress=False, restore_best=restore_best, checkpoint=ckpt,
                 scheduler=None, val_every=1)
    assert result.best_epoch != 3  # the best and the last epochs differ here
    loaded, _ = load_model(ckpt)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    best, _ = load_model(ckpt, which='best')
    last, _ = load_model(ckpt, which='last')
    assert not torch.equal(best.func.decay, last.func.decay)


def test_one_time_point_message_is_not_circular():
    data, X, t = _small_problem()
    with pytest.raises(ValueError, match='needs at least 3 time points.*holdout=None'):
        fit(_student(), data, X[:2], t[:2], holdout='time', cell_order='graph',
            progress=False)
    with pytest.raises(ValueError, match='at least two time points'):
        fit(_student(), data, X[:1], t[:1], holdout=None, cell_order='graph',
            progress=False)


def test_val_every_scores_every_kth_epoch_and_the_last():
    data, X, t = _small_problem()
    result = fit(_student(), data, X, t, epochs=7, val_every=3, holdout='time',
                 cell_order='graph', progress=False)
    scored = [h['epoch'] for h in result.history if not np.isnan(h['val_loss'])]
    assert scored == [2, 5, 6]
    assert result.best_epoch in scored
    with pytest.raises(ValueError, match="'val_every' must be a positive integer"):
        fit(_student(), data, X, t, epochs=1, val_every=0, cell_order='graph',
            progress=False)


def test_the_default_trains_on_every_interval():
    # holdout=None by default: the first gradient-matching loss is the mean over
    # all 4 intervals of 5 times, and no epoch is scored on a held-out split
    data, X, t = _small_problem()
    model = _student().double()
    Xd, td = X.double(), t.double()
    with torch.no_grad():
        per = []
        for k in range(4):
            mid = model.initial_state(data, 0.5 * (Xd[k] + Xd[k + 1]))
            pred = model.func.set_graph(data)(td[0], mid)[:, 0].view(16, 3)
            target = (Xd[k + 1] - Xd[k]) / (td[k + 1] - td[k])
            per.append(float(((pred - target) ** 2).mean()))
    result = fit(model, data, Xd, td, epochs=3, lr=1e-12, cell_order='graph',
                 progress=False, gene_weights=None)
    assert result.history[0]['train_loss'] == pytest.approx(np.mean(per), rel=1e-6)
    assert all(np.isnan(h['val_loss']) for h in result.history)
    # the monitored loss is the training loss: restore_best keeps its best epoch
    losses = [h['train_loss'] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses))
    assert result.best_val_loss == pytest.approx(min(losses))
