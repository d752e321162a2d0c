"""Faults at the command line (issue 14): nothing silently wrong, nothing lost,
every run resumable. Each test reproduces one failure through ``subprocess`` on a
tiny simulated tissue; variations of a case run in-process through ``main``.
"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from torch_staged.cli import build_parser, main

# (a checkpoint after every epoch, so that an interrupt after epoch k finds k)
FAST = ['--holdout', '2', '--k', '5', '--hidden', '8', '--mlp', '16', '--type-dim', '2',
        '--method', 'rk4', '--step-size', '0.5', '--threads', '1', '--checkpoint-seconds', '0']
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def _cli(*argv, timeout=300):
    """``python -m torch_staged.cli ARGV`` in a subprocess."""
    return subprocess.run([sys.executable, '-m', 'torch_staged.cli', *map(str, argv)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def _error_line(proc_or_err: str, command: str) -> str:
    """The single stderr line of a failed command (asserts that it is one)."""
    lines = [line for line in proc_or_err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc_or_err
    assert lines[0].startswith(f'torch-staged {command}: error: '), proc_or_err
    assert 'Traceback' not in proc_or_err and 'weights_only=False' not in proc_or_err
    return lines[0]


@pytest.fixture(scope='module')
def tissue(tmp_path_factory):
    """A 30-cell, 8-gene, 7-time simulated tissue and its prior tables."""
    root = tmp_path_factory.mktemp('faults')
    assert main(['simulate', '--out', str(root / 'data.h5ad'), '--cells', '30', '--genes',
                 '8', '--pairs', '2', '--decoy-pairs', '1', '--k', '5', '--times', '7',
                 '--seed', '1']) == 0
    return root


def _fit_args(root: Path, out: Path, epochs: int = 2):
    return ['fit', root / 'data.h5ad', '--lr-pairs', root / 'data_lr_pairs.csv',
            '--grn', root / 'data_grn.csv', '--out', out, '--epochs', str(epochs)] + FAST


def _history_length(run: Path) -> int:
    try:
        return len(json.loads((run / 'history.json').read_text())['history'])
    except (OSError, ValueError, KeyError):
        return 0


def _status(run: Path) -> str:
    return json.loads((run / 'run.json').read_text())['status']


@pytest.fixture(scope='module')
def finished(tissue):
    """A complete run, fitted through a subprocess without --quiet."""
    run = tissue / 'RUN'
    proc = _cli(*_fit_args(tissue, run))
    assert proc.returncode == 0, proc.stderr
    return run, proc


# ---- 1. a blown-up fit fails, and says how to fix it ------------------------------
def test_blown_up_fit_exits_2_and_names_the_remedy(tissue, capsys):
    run = tissue / 'BLOWN'
    args = _fit_args(tissue, run)
    args = [a for a in args if a not in ('--method', 'rk4', '--step-size', '0.5')]
    proc = _cli(*args, '--lr', '1e4', '--quiet')  # dopri5, as in the issue
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr, 'fit')
    assert 'the fit diverged' in line and 'lower --lr' in line, line
    assert "'lr'" not in line
    assert not (run / 'metrics.json').exists()  # no run written as if it succeeded
    assert _status(run) == 'diverged'
    code = main(['predict', str(run), str(tissue / 'data.h5ad'), '--out',
                 str(tissue / 'x.h5ad')])
    line = _error_line(capsys.readouterr().err, 'predict')
    assert code == 2 and 'diverged' in line and '--lr' in line


# ---- 2. resume, refusal, interrupted runs -----------------------------------------
def test_rerun_refuses_to_overwrite_a_run(tissue, finished, capsys):
    run, _ = finished
    before = (run / 'checkpoint.pt').read_bytes()
    code = main([str(a) for a in _fit_args(tissue, run)] + ['--quiet'])
    line = _error_line(capsys.readouterr().err, 'fit')
    assert code == 2 and 'already holds a run' in line and f'--resume {run}' in line
    assert '--overwrite' in line
    assert (run / 'checkpoint.pt').read_bytes() == before  # untouched
    # --overwrite replaces it
    other = tissue / 'OVER'
    shutil.copytree(run, other)
    assert main([str(a) for a in _fit_args(tissue, other, epochs=1)]
                + ['--overwrite', '--quiet']) == 0
    assert _history_length(other) == 1 and _status(other) == 'complete'


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(argv, run: Path, after_epochs: int, sig) -> subprocess.CompletedProcess:
    """Starts ``fit``, sends :obj:`sig` once history.json has the epochs."""
    # SIGINT as in a terminal, even when the tests run as a background job (which
    # inherits SIG_IGN, and Python then keeps ignoring Ctrl-C)
    proc = subprocess.Popen([sys.executable, '-m', 'torch_staged.cli', *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, preexec_fn=_default_sigint)
    deadline = time.time() + 240
    while _history_length(run) < after_epochs and proc.poll() is None:
        assert time.time() < deadline, 'the fit did not start'
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tissue, capsys):
    epochs = 12
    straight = tissue / 'STRAIGHT'
    assert main([str(a) for a in _fit_args(tissue, straight, epochs)] + ['--quiet']) == 0
    run = tissue / 'INTERRUPTED'
    argv = _fit_args(tissue, run, epochs) + ['--quiet']
    # Ctrl-C after 2 epochs: exit 130, a directory that says what it is
    proc = _interrupt(argv, run, 2, signal.SIGINT)
    assert proc.returncode == 130, proc.stderr
    assert f'torch-staged fit --resume {run}' in proc.stderr
    info = json.loads((run / 'run.json').read_text())
    assert info['status'] == 'interrupted' and 2 <= info['epochs_done'] < epochs
    code = main(['predict', str(run), str(tissue / 'data.h5ad'), '--out',
                 str(tissue / 'x.h5ad')])
    line = _error_line(capsys.readouterr().err, 'predict')
    assert code == 2 and 'unfinished fit' in line and f'fit --resume {run}' in line
    # options other than --epochs/--patience/... are the run's own
    code = main(['fit', '--resume', str(run), '--lr', '0.5'])
    line = _error_line(capsys.readouterr().err, 'fit')
    assert code == 2 and '--lr 0.5 differs' in line
    # killed by a scheduler (SIGTERM) while resumed: still resumable
    done = _history_length(run)
    proc = _interrupt(['fit', '--resume', run, '--quiet'], run, done + 2,
                      signal.SIGTERM)
    assert proc.returncode == 130, proc.stderr
    assert _status(run) == 'interrupted'
    # resumed to the end: the same parameters and history as without interruption
    proc = _cli('fit', '--resume', run, '--quiet')
    assert proc.returncode == 0, proc.stderr
    assert _status(run) == 'complete' and (run / 'metrics.json').exists()
    a = torch.load(straight / 'checkpoint.pt', weights_only=True)
    b = torch.load(run / 'checkpoint.pt', weights_only=True)
    assert [h['train_loss'] for h in a['history']] == [h['train_loss']
                                                      for h in b['history']]
    for name, value in a['model'].items():
        torch.testing.assert_close(b['model'][name], value, rtol=0, atol=0, msg=name)
    # a complete run is not resumed again without more epochs
    code = main(['fit', '--resume', str(run)])
    line = _error_line(capsys.readouterr().err, 'fit')
    assert code == 2 and 'is complete' in line and '--epochs' in line


# ---- 3. distributed == one process with --tiles-per-step W ----------------------
@pytest.mark.skipif(not torch.distributed.is_available(), reason='no torch.distributed')
def test_two_ranks_equal_one_process_with_tiles_per_step(tissue):
    tiled = ['--tile-size', '2.5', '--loss', 'one_step', '--quiet']
    ranks = tissue / 'RANKS'
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
         '--nproc_per_node=2', '-m', 'torch_staged.cli']
        + [str(a) for a in _fit_args(tissue, ranks)] + tiled + ['--distributed'],
        capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = tissue / 'SINGLE'
    assert main([str(a) for a in _fit_args(tissue, single)] + tiled
                + ['--tiles-per-step', '2']) == 0
    a = torch.load(ranks / 'checkpoint.pt', weights_only=True)
    b = torch.load(single / 'checkpoint.pt', weights_only=True)
    assert a['fit_config']['world_size'] == 2 and b['fit_config']['world_size'] == 1
    for name, value in b['model'].items():
        torch.testing.assert_close(a['model'][name], value, rtol=1e-5, atol=1e-6,
                                   msg=name)
    for x, y in zip(a['history'], b['history']):
        assert x['train_loss'] == pytest.approx(y['train_loss'], rel=1e-5)


# ---- 4. a bad checkpoint is one line naming the file --------------------------------
class _Payload:
    def __reduce__(self):
        return (print, ('this must never run', ))


@pytest.mark.parametrize('damage', ['text', 'truncated', 'code'])
def test_bad_checkpoint_is_one_line_naming_the_file(tissue, finished, damage, capsys):
    run = tissue / f'BAD_{damage}'
    shutil.copytree(finished[0], run)
    ckpt = run / 'checkpoint.pt'
    if damage == 'text':
        ckpt.write_text('not a checkpoint at all\n')
    elif damage == 'truncated':
        raw = ckpt.read_bytes()
        ckpt.write_bytes(raw[:len(raw) // 3])
    else:
        with open(ckpt, 'wb') as f:
            pickle.dump({'format': 'torch_staged.checkpoint/1', 'x': _Payload()}, f,
                        protocol=2)
    argv = ['predict', run, tissue / 'data.h5ad', '--out', tissue / 'x.h5ad', '--quiet']
    if damage == 'text':  # one of them end to end
        proc = _cli(*argv)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = main([str(a) for a in argv]), capsys.readouterr().err
    line = _error_line(err, 'predict')
    assert code == 2 and str(ckpt) in line
    assert 'this must never run' not in err
    assert 'weights_only' not in line


# ---- 6. one observed time: a message that is not circular -------------------------
def test_one_time_point_message(tissue, capsys):
    adata = ad.read_h5ad(tissue / 'data.h5ad')
    times = np.sort(adata.obs['time'].unique())
    adata[adata.obs['time'] == times[0]].copy().write_h5ad(tissue / 'one.h5ad')
    adata[adata.obs['time'].isin(times[:2])].copy().write_h5ad(tissue / 'two.h5ad')
    base = ['fit', '--lr-pairs', tissue / 'data_lr_pairs.csv', '--out', tissue / 'ONE']
    proc = _cli(base[0], tissue / 'one.h5ad', *base[1:], '--holdout', '2')
    line = _error_line(proc.stderr, 'fit')
    assert proc.returncode == 2
    assert "'time' has 1 distinct time(s)" in line and 'at least 2' in line
    assert 'use at most' not in line
    for data, holdout, needle in (('one.h5ad', '0', 'at least 2 observed times'),
                                  ('two.h5ad', '1', 'use --holdout 0')):
        code = main([str(a) for a in base[:1] + [tissue / data] + base[1:]]
                    + ['--holdout', holdout])
        line = _error_line(capsys.readouterr().err, 'fit')
        assert code == 2 and needle in line, line


# ---- 7. help and errors in the command line's words ---------------------------------
def test_every_option_has_help_and_shows_its_default(capsys):
    assert main(['fit', '--help']) == 0
    out = capsys.readouterr().out
    assert '--resume RUN' in out and '--tiles-per-step' in out
    assert '(default: 0.03)' in out  # --lr
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == 'command')
    for name, subparser in sub.choices.items():
        assert subparser.description, name
        assert subparser.formatter_class is not None
        text = subparser.format_help()
        for action in subparser._actions:
            assert action.help, (name, action.option_strings or action.dest)
            if action.option_strings and action.default not in (None, False,
                                                               '==SUPPRESS=='):
                assert f'(default: {action.default})' in ' '.join(text.split()), (
                    name, action.option_strings)


def test_errors_name_flags_not_python_keywords(tissue, capsys):
    bad = tissue / 'bad_lr.csv'
    bad.write_text('ligand,receptor\nL0,R0\nXYZ,R0\n')
    code = main(['fit', str(tissue / 'data.h5ad'), '--lr-pairs', str(bad), '--out',
                 str(tissue / 'FLAGS')])
    line = _error_line(capsys.readouterr().err, 'fit')
    assert code == 2 and '--missing-genes drop' in line and 'missing_genes' not in line
    proc = _cli('simulate', '--out', tissue / 's.h5ad', '--genes', '3')
    line = _error_line(proc.stderr, 'simulate')
    assert proc.returncode == 2 and '--genes' in line and 'num_genes' not in line
    assert not (tissue / 's.h5ad').exists()
    code = main(['simulate', '--out', str(tissue / 's.h5ad'), '--cells', '5', '--k', '8'])
    line = _error_line(capsys.readouterr().err, 'simulate')
    assert code == 2 and '--k 8' in line and '--cells 5' in line


# ---- 8. progress: log lines when not a terminal, history every epoch ----------------
def test_progress_lines_when_not_a_terminal(finished):
    run, proc = finished
    lines = proc.stderr.splitlines()
    epochs = [line for line in lines if line.startswith('fit: epoch ')]
    assert [line.split()[2] for line in epochs] == ['1/2', '2/2']
    assert any(line.startswith('interaction strengths') for line in lines)
    assert any(line.startswith('tables and figures done') for line in lines)
    assert _history_length(run) == 2 and _status(run) == 'complete'


def test_spatial_map_has_a_legend_of_cell_types():
    from torch_staged import plot
    pos = torch.rand(12, 2)
    types = torch.tensor([0, 1, 2] * 4)
    fig = plot.spatial_signalling(pos, torch.rand(12), cell_type=types,
                                  type_names=['T cell', 'B cell', 'stroma'])
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ['T cell', 'B cell', 'stroma']
    fig = plot.spatial_signalling(pos, torch.rand(12), cell_type=types)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        'type 0', 'type 1', 'type 2']
