import json

import pytest
import torch

from torch_staged.models import make_model
from torch_staged.sim import graph_from_simulation, simulate_tissue
from torch_staged.train import fit


@pytest.mark.slow
def test_staged_beats_cell_autonomous_baseline():
    # A small simulated tissue where receptors are driven by the neighbours'
    # ligands: the full model forecasts the held-out times (free rollout from t0)
    # better than the same model without intercellular edges.
    adata = simulate_tissue(num_cells=80, num_genes=8, num_pairs=2, num_decoy_pairs=0,
                            noise=0.02, seed=1)
    data, X, t = graph_from_simulation(adata)
    X = data.cells_to_graph(X, dim=1)
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    holdout = 4
    errors = {}
    for name in ('staged', 'no_signalling'):
        torch.manual_seed(0)
        model = make_model(name, data.num_genes, data.num_cell_types, hidden_channels=8,
                           mlp_channels=16)
        fit(model, data, epochs=300, lr=0.02, holdout='time', holdout_size=holdout,
            progress=False)
        with torch.no_grad():
            pred = model(data, t, X[0])
        errors[name] = float(((pred[-holdout:] - X[-holdout:]) ** 2).mean())
    assert errors['staged'] < 0.8 * errors['no_signalling'], errors


@pytest.mark.slow
def test_demo_command_writes_metrics_and_figures(tmp_path):
    from torch_staged.cli import main
    runs = {}
    for jobs in (1, 2):  # in this process, and fits in parallel worker processes
        out = tmp_path / f'demo{jobs}'
        code = main(['demo', '--out', str(out), '--epochs', '2', '--quiet', '--cells',
                     '40', '--genes', '16', '--jobs', str(jobs),
                     '--models', 'staged', 'no_signalling', 'no_attention'])
        assert code == 0
        runs[jobs] = json.loads((out / 'metrics.json').read_text())
    assert runs[2]['jobs'] == 2 and runs[1]['jobs'] == 1
    for name in ('staged', 'no_signalling', 'no_attention'):  # the same fits
        assert runs[2][name]['heldout_mse'] == pytest.approx(
            runs[1][name]['heldout_mse'], rel=1e-4)
    metrics = runs[2]
    for name in ('staged', 'no_signalling', 'no_attention'):
        for key in ('heldout_r2', 'rollout_r2', 'inter_auroc', 'intra_auroc'):
            assert key in metrics[name]
    assert metrics['no_signalling']['inter_auroc'] is None
    assert metrics['seconds'] > 0
    base = metrics['baselines']
    assert set(base) == {'persistence', 'linear_extrapolation', 'ridge', 'lasso', 'forest',
                         'correlation'}
    assert base['persistence']['heldout_mse'] == pytest.approx(
        metrics['staged']['persistence_mse'], rel=1e-5)
    assert 0.0 <= base['ridge']['intra_auroc'] <= 1.0
    for png in ('loss_curves', 'trajectories', 'interactions', 'spatial_signalling'):
        assert (out / f'{png}.png').stat().st_size > 1000
