"""The ``torch-staged`` command line, end to end on a tiny simulated tissue."""
import inspect
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from torch_staged.cli import _subparser, build_parser, main
from torch_staged.models import STAGED
from torch_staged.train import fit

FIT_FAST = ['--epochs', '2', '--holdout', '2', '--k', '5', '--hidden', '8', '--mlp', '16',
            '--type-dim', '2', '--method', 'rk4', '--step-size', '0.5', '--quiet']


@pytest.fixture(scope='module')
def chain(tmp_path_factory):
    """simulate -> fit -> predict -> perturb, run once for the module."""
    root = tmp_path_factory.mktemp('cli')
    data = root / 'data.h5ad'
    run = root / 'RUN'
    codes = {}
    codes['simulate'] = main(['simulate', '--out', str(data), '--cells', '30', '--genes',
                              '8', '--pairs', '2', '--decoy-pairs', '1', '--k', '5',
                              '--times', '7', '--seed', '1'])
    codes['fit'] = main(['fit', str(data), '--cell-key', 'cell_id', '--time-key', 'time',
                         '--type-key', 'cell_type', '--lr-pairs',
                         str(root / 'data_lr_pairs.csv'), '--grn',
                         str(root / 'data_grn.csv'), '--out', str(run)] + FIT_FAST)
    codes['predict'] = main(['predict', str(run), str(data), '--out',
                             str(root / 'pred.h5ad'), '--quiet'])
    codes['perturb'] = main(['perturb', str(run), str(data), '--knockout', 'L0',
                             '--cell-types', 'T0', 'T1', '--out', str(root / 'pert.h5ad'),
                             '--quiet'])
    return root, codes


def test_simulate_writes_data_and_priors(chain):
    root, codes = chain
    assert codes['simulate'] == 0
    adata = ad.read_h5ad(root / 'data.h5ad')
    assert adata.shape == (30 * 7, 8)
    pairs = pd.read_csv(root / 'data_lr_pairs.csv')
    assert list(pairs.columns) == ['ligand', 'receptor'] and len(pairs) == 3
    grn = pd.read_csv(root / 'data_grn.csv')
    assert {'source', 'target', 'cell_type'} <= set(grn.columns)
    assert (root / 'data_truth_intercellular.csv').exists()


def test_fit_writes_a_self_contained_run_directory(chain):
    root, codes = chain
    assert codes['fit'] == 0
    run = root / 'RUN'
    for name in ('checkpoint.pt', 'run.json', 'metrics.json', 'history.json',
                 'lr_pairs.csv', 'grn.csv', 'intracellular.csv', 'intercellular.csv',
                 'loss_curves.png', 'signalling_heatmaps.png', 'spatial_signalling.png'):
        assert (run / name).exists(), name
    info = json.loads((run / 'run.json').read_text())
    assert info['genes'] == list(ad.read_h5ad(root / 'data.h5ad').var_names)
    assert info['cell_types'] == ['T0', 'T1', 'T2']
    assert info['keys']['cell_key'] == 'cell_id' and info['keys']['layer'] is None
    assert info['graph']['k'] == 5
    assert info['model_config']['num_genes'] == 8
    assert info['model_config']['method'] == 'rk4'
    metrics = json.loads((run / 'metrics.json').read_text())
    for key in ('final_train_loss', 'final_val_loss', 'heldout_r2', 'heldout_mse',
                'rollout_r2', 'epochs', 'fit_seconds'):
        assert key in metrics, key
    assert metrics['epochs'] == 2 and np.isfinite(metrics['heldout_r2'])
    # the checkpoint loads without code
    state = torch.load(run / 'checkpoint.pt', weights_only=True)
    assert state['config']['num_genes'] == 8
    inter = pd.read_csv(run / 'intercellular.csv')
    assert (np.diff(inter['abs_score'].to_numpy()) <= 0).all()


def test_predict_writes_results(chain):
    root, codes = chain
    assert codes['predict'] == 0
    pred = ad.read_h5ad(root / 'pred.h5ad')
    assert pred.layers['staged_pred'].shape == pred.shape
    assert np.isfinite(pred.layers['staged_pred']).all()
    assert 'intercellular' in pred.uns['staged']
    assert 'staged_signalling' in pred.obsp


def test_predict_ensemble_of_runs(chain, capsys):
    # a second run of the same data and options but --seed, then both as an ensemble
    root, _ = chain
    data, run, run2 = root / 'data.h5ad', root / 'RUN', root / 'RUN_seed2'
    fit_args = ['fit', str(data), '--cell-key', 'cell_id', '--time-key', 'time',
                '--type-key', 'cell_type', '--lr-pairs', str(root / 'data_lr_pairs.csv'),
                '--grn', str(root / 'data_grn.csv')] + FIT_FAST
    assert main(fit_args + ['--out', str(run2), '--seed', '2']) == 0
    out = root / 'pred_ens.h5ad'
    assert main(['predict', str(run), str(data), '--ensemble', str(run2), '--out',
                 str(out), '--quiet']) == 0
    pred, single = ad.read_h5ad(out), ad.read_h5ad(root / 'pred.h5ad')
    assert pred.uns['staged']['params']['ensemble_size'] == 2
    assert 'abs_score_sd' in pred.uns['staged']['intracellular'].columns
    assert not np.allclose(pred.layers['staged_pred'], single.layers['staged_pred'],
                           equal_nan=True)
    # refused in one line, before any prediction: a run of another graph, the same
    # run twice, a run of the same seed
    other, same_seed = root / 'RUN_other', root / 'RUN_same_seed'
    assert main(fit_args + ['--out', str(other), '--k', '4', '--seed', '5']) == 0
    assert main(fit_args + ['--out', str(same_seed)]) == 0  # --seed 0, as RUN
    for runs, needle in (([str(other)], "in its graph (k 5 vs 4)"),
                         ([str(run2), str(run)], 'twice'),
                         ([str(same_seed)], 'the same --seed 0')):
        capsys.readouterr()
        code = main(['predict', str(run), str(data), '--ensemble', *runs, '--out',
                     str(root / 'x.h5ad')])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert 'predicting' not in err and not (root / 'x.h5ad').exists()


def test_predict_ensemble_flag_may_repeat():
    args = build_parser().parse_args(['predict', 'RUN', 'data.h5ad', '--ensemble', 'R1',
                                      '--ensemble', 'R2', 'R3', '--out', 'o.h5ad'])
    assert args.ensemble == ['R1', 'R2', 'R3'] and args.run == 'RUN'


def test_perturb_writes_layers_and_response_curves(chain):
    root, codes = chain
    assert codes['perturb'] == 0
    pert = ad.read_h5ad(root / 'pert.h5ad')
    for key in ('staged_perturbed', 'staged_baseline', 'staged_delta'):
        assert pert.layers[key].shape == pert.shape
    l0 = list(pert.var_names).index('L0')
    selected = pert.obs['cell_type'].isin(['T0', 'T1']).to_numpy()
    assert (pert.layers['staged_perturbed'][selected, l0] == 0).all()
    other = pert.layers['staged_delta'][~selected & (pert.obs['time'] == 0).to_numpy()]
    assert np.abs(other).max() == 0  # nothing changes at t0 outside the selection
    assert 'knockout' in pert.uns['staged_perturbation']['description']
    assert (root / 'pert_response.png').stat().st_size > 1000
    table = pd.read_csv(root / 'pert_response.csv', index_col=0)
    assert table.shape == (7, 8)
    # baseline of perturb == the predictions of predict
    pred = ad.read_h5ad(root / 'pred.h5ad')
    np.testing.assert_allclose(pert.layers['staged_baseline'], pred.layers['staged_pred'],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('command', [[], ['simulate'], ['fit'], ['predict'], ['perturb'],
                                     ['demo']])
def test_help(command, capsys):
    assert main(command + ['--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: torch-staged')


def test_parser_has_all_subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == 'command')
    assert set(sub.choices) == {'simulate', 'fit', 'predict', 'perturb', 'demo'}


#: CLI option of `fit` -> (keyword, the API function whose default it must share)
_SHARED_DEFAULTS = {
    'hidden': ('hidden_channels', STAGED), 'mlp': ('mlp_channels', STAGED),
    'type_dim': ('type_dim', STAGED), 'normalize': ('normalize', STAGED),
    'pair_dim': ('pair_dim', STAGED), 'value_channels': ('value_channels', STAGED),
    'method': ('method', STAGED), 'rtol': ('rtol', STAGED), 'atol': ('atol', STAGED),
    'epochs': ('epochs', fit), 'lr': ('lr', fit), 'loss': ('loss', fit),
    'gene_weights': ('gene_weights', fit), 'val_every': ('val_every', fit),
    'patience': ('patience', fit), 'divergence': ('divergence', fit),
    'tiles_per_step': ('tiles_per_step', fit), 'seed': ('seed', fit),
    'state_scores': ('score_state', STAGED),
}


@pytest.mark.parametrize('option', sorted(_SHARED_DEFAULTS))
def test_fit_defaults_are_the_api_defaults(option):
    # `torch-staged fit` must train the model the science suite measures
    # (make_model(...) + fit(...) with their defaults)
    name, api = _SHARED_DEFAULTS[option]
    cli_default = _subparser(build_parser(), 'fit').get_default(option)
    api_default = inspect.signature(api).parameters[name].default
    assert cli_default == api_default, (option, cli_default, api_default)


def test_demo_fits_staged_and_no_signalling_by_default():
    demo = _subparser(build_parser(), 'demo')
    assert demo.get_default('models') == ['staged', 'no_signalling']
    args = build_parser().parse_args(['demo', '--models', 'staged', 'no_attention'])
    assert args.models == ['staged', 'no_attention']


def test_resume_keeps_the_runs_schedule(tmp_path):
    # a run from before the cosine default resumes at its constant rate
    from torch_staged.cli import _run_scheduler
    from torch_staged.testing import linear_coupled_tissue
    data, X, t = linear_coupled_tissue()
    for scheduler in (None, 'cosine', 'plateau'):
        ckpt = tmp_path / f'{scheduler}.pt'
        fit(STAGED(3, 2, hidden_channels=4, mlp_channels=4), data, X, t, epochs=1,
            cell_order='graph', progress=False, checkpoint=ckpt, scheduler=scheduler)
        assert _run_scheduler(str(ckpt)) == scheduler


def _bad_cases(root):
    data, run = str(root / 'data.h5ad'), str(root / 'RUN')
    lr = str(root / 'data_lr_pairs.csv')
    out = str(root / 'x.h5ad')
    return {
        'missing data file': (['fit', str(root / 'nope.h5ad'), '--lr-pairs', lr,
                               '--out', str(root / 'R2')], 'does not exist'),
        'missing lr table': (['fit', data, '--lr-pairs', str(root / 'nope.csv'),
                              '--out', str(root / 'R2')], 'does not exist'),
        'unknown cell key': (['fit', data, '--cell-key', 'cell', '--lr-pairs', lr,
                              '--out', str(root / 'R2')], "--cell-key 'cell'"),
        'unknown layer': (['fit', data, '--layer', 'counts', '--lr-pairs', lr,
                           '--out', str(root / 'R2')], "--layer 'counts'"),
        'too many holdout': (['fit', data, '--lr-pairs', lr, '--holdout', '6', '--out',
                              str(root / 'R2')], '--holdout'),
        'bad genes in priors': (['fit', data, '--lr-pairs', str(root / 'bad_lr.csv'),
                                 '--out', str(root / 'R2')], 'XYZ'),
        'not a run': (['predict', str(root), data, '--out', out], 'run.json'),
        'missing run': (['predict', str(root / 'nope'), data, '--out', out],
                        'does not exist'),
        'gene not in panel': (['perturb', run, data, '--knockout', 'NOPE', '--out', out],
                              "'NOPE'"),
        'unknown type': (['perturb', run, data, '--knockout', 'L0', '--cell-types', 'T9',
                          '--out', out], "'T9'"),
        'bad overexpress': (['perturb', run, data, '--overexpress', 'L0', '--out', out],
                            'GENE=VALUE'),
        'unknown pair': (['perturb', run, data, '--lr-pair', 'L0:G0', '--out', out],
                         'L0:G0'),
        'unknown cell id': (['perturb', run, data, '--knockout', 'L0', '--cells', '999',
                             '--out', out], '999'),
        'nothing to perturb': (['perturb', run, data, '--out', out], 'nothing'),
        'not h5ad out': (['predict', run, data, '--out', str(root / 'x.csv')], '.h5ad'),
        'not an h5ad': (['predict', run, lr, '--out', out], 'h5ad'),
        'unknown option': (['fit', data, '--lr-pairs', lr, '--out', 'R', '--bogus'],
                           'unrecognized'),
        'bad number': (['fit', data, '--lr-pairs', lr, '--out', 'R', '--epochs', 'x'],
                       'invalid int'),
        'negative checkpoint seconds': (['fit', data, '--lr-pairs', lr, '--out', 'R',
                                         '--checkpoint-seconds', '-1'],
                                        '--checkpoint-seconds must be >= 0'),
        'bad device': (['predict', run, data, '--out', out, '--device', 'tpu'],
                       'device'),
    }


@pytest.fixture(scope='module')
def bad_root(chain):
    root, _ = chain
    pd.DataFrame({'ligand': ['XYZ'], 'receptor': ['R0']}).to_csv(root / 'bad_lr.csv',
                                                                  index=False)
    # data whose gene panel lacks a gene of the model
    adata = ad.read_h5ad(root / 'data.h5ad')
    adata[:, [g for g in adata.var_names if g != 'G0']].copy().write_h5ad(
        root / 'fewer.h5ad')
    return root


@pytest.mark.parametrize('case', sorted(_bad_cases(Path('.'))))
def test_bad_input_one_line_exit_2(bad_root, case, capsys):
    argv, needle = _bad_cases(bad_root)[case]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (case, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f'torch-staged {argv[0]}: error:'), err
    assert 'Traceback' not in err
    assert needle in lines[0], (needle, err)


def test_predict_on_data_missing_a_gene(bad_root, capsys):
    code = main(['predict', str(bad_root / 'RUN'), str(bad_root / 'fewer.h5ad'), '--out',
                 str(bad_root / 'x.h5ad')])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert 'G0' in err and 'Traceback' not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')
def test_cuda_device_without_cuda(bad_root, capsys):
    code = main(['predict', str(bad_root / 'RUN'), str(bad_root / 'data.h5ad'), '--out',
                 str(bad_root / 'x.h5ad'), '--device', 'cuda'])
    err = capsys.readouterr().err
    assert code == 2 and 'CUDA is not available' in err


def test_snapshots_chain(tmp_path, capsys):
    # Spatial snapshots (different cells at each time): fit --snapshots links them
    # by optimal transport; predict / perturb redo the same linking.
    data = tmp_path / 'snap.h5ad'
    assert main(['simulate', '--out', str(data), '--cells', '30', '--genes', '8',
                 '--pairs', '2', '--decoy-pairs', '1', '--k', '5', '--times', '5',
                 '--snapshot']) == 0
    run = tmp_path / 'RUN'
    assert main(['fit', str(data), '--snapshots', '--lr-pairs',
                 str(tmp_path / 'snap_lr_pairs.csv'), '--out', str(run)] + FIT_FAST) == 0
    assert (run / 'trajectories.h5ad').exists()
    assert json.loads((run / 'run.json').read_text())['snapshots'] is not None
    traj = ad.read_h5ad(run / 'trajectories.h5ad')
    assert traj.uns['staged_trajectories']['alpha_spatial'] == 0.0  # expression only
    spatial = tmp_path / 'RUN_SPATIAL'
    assert main(['fit', str(data), '--snapshots', '--alpha-spatial', '0.5', '--lr-pairs',
                 str(tmp_path / 'snap_lr_pairs.csv'), '--out', str(spatial)]
                + FIT_FAST) == 0
    assert json.loads((spatial / 'run.json').read_text())['snapshots']['alpha_spatial'] == 0.5
    traj = ad.read_h5ad(spatial / 'trajectories.h5ad')
    assert traj.uns['staged_trajectories']['alpha_spatial'] == 0.5
    for bad, message in ((['--alpha-spatial', '-1', '--snapshots'], 'a number >= 0'),
                         (['--alpha-spatial', '0.5'], '--alpha-spatial needs --snapshots')):
        code = main(['fit', str(data), '--lr-pairs', str(tmp_path / 'snap_lr_pairs.csv'),
                     '--out', str(tmp_path / 'BAD')] + bad + FIT_FAST)
        assert code == 2 and message in capsys.readouterr().err
    assert main(['perturb', str(run), str(data), '--knockout', 'L0', '--out',
                 str(tmp_path / 'pert.h5ad'), '--quiet']) == 0
    pert = ad.read_h5ad(tmp_path / 'pert.h5ad')
    assert pert.n_obs == 15 * 5  # anchors (half the cells) x times
    assert np.isfinite(pert.layers['staged_delta']).all()
    # an ensemble of snapshot runs of other seeds (their linking differs by the seed)
    seed3 = tmp_path / 'RUN_SEED3'
    assert main(['fit', str(data), '--snapshots', '--lr-pairs',
                 str(tmp_path / 'snap_lr_pairs.csv'), '--out', str(seed3), '--seed', '3']
                + FIT_FAST) == 0
    assert main(['predict', str(run), str(data), '--ensemble', str(seed3), '--out',
                 str(tmp_path / 'ens.h5ad'), '--quiet']) == 0
    assert ad.read_h5ad(tmp_path / 'ens.h5ad').uns['staged']['params']['ensemble_size'] == 2
    capsys.readouterr()
    assert main(['predict', str(run), str(data), '--ensemble', str(spatial), '--out',
                 str(tmp_path / 'bad.h5ad'), '--quiet']) == 2
    err = capsys.readouterr().err
    assert 'differs from' in err and 'in its snapshots (alpha_spatial' in err, err


def test_snapshot_predict_lands_on_every_input_row(tmp_path):
    # issue 14 item 5: every input row gets its prediction under its own name
    data = tmp_path / 'snap.h5ad'
    assert main(['simulate', '--out', str(data), '--cells', '30', '--genes', '8',
                 '--pairs', '2', '--decoy-pairs', '1', '--k', '5', '--times', '4',
                 '--snapshot']) == 0
    user = ad.read_h5ad(data)
    user.obs_names = [f'barcode{i}' for i in range(user.n_obs)]
    user.obs['batch_note'] = 'kept'
    user.write_h5ad(data)
    run = tmp_path / 'RUN'
    assert main(['fit', str(data), '--snapshots', '--lr-pairs',
                 str(tmp_path / 'snap_lr_pairs.csv'), '--out', str(run)] + FIT_FAST) == 0
    assert main(['predict', str(run), str(data), '--out', str(tmp_path / 'p.h5ad'),
                 '--quiet']) == 0
    out = ad.read_h5ad(tmp_path / 'p.h5ad')
    assert list(out.obs_names) == list(user.obs_names)
    assert (out.obs['batch_note'] == 'kept').all()
    assert np.isfinite(out.layers['staged_pred']).all()


def test_library_key_fit_reports_every_section(tmp_path):
    data = tmp_path / 'sec.h5ad'
    assert main(['simulate', '--out', str(data), '--cells', '40', '--genes', '8',
                 '--pairs', '2', '--decoy-pairs', '1', '--k', '4', '--times', '4']) == 0
    adata = ad.read_h5ad(data)
    adata.obs['section'] = np.where(adata.obs['cell_id'].to_numpy() < 20, 's1', 's2')
    adata.write_h5ad(data)
    run = tmp_path / 'RUN'
    assert main(['fit', str(data), '--library-key', 'section', '--lr-pairs',
                 str(tmp_path / 'sec_lr_pairs.csv'), '--out', str(run)] + FIT_FAST) == 0
    metrics = json.loads((run / 'metrics.json').read_text())
    assert set(metrics['sections']) == {'s1', 's2'}
    assert sum(s['cells'] for s in metrics['sections'].values()) == 40
    assert json.loads((run / 'run.json').read_text())['keys']['library_key'] == 'section'
    code = main(['fit', str(data), '--library-key', 'nope', '--lr-pairs',
                 str(tmp_path / 'sec_lr_pairs.csv'), '--out', str(tmp_path / 'R2')]
                + FIT_FAST)
    assert code == 2
