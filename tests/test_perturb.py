"""In-silico perturbation: directions against the simulator's ground truth."""
import numpy as np
import pandas as pd
import pytest
import torch

from torch_staged import PerturbationResult, perturb
from torch_staged.io import read_trajectories
from torch_staged.models import make_model
from torch_staged.sim import graph_from_simulation, simulate_tissue
from torch_staged.train import fit
from torch_staged.typing import CELL, NEAR

TIMES = np.linspace(0.0, 8.0, 9)
SIM = dict(num_genes=8, num_pairs=2, num_decoy_pairs=1, noise=0.02, times=TIMES)
FAST = dict(hidden_channels=8, mlp_channels=16, type_dim=4, method='rk4',
            options={'step_size': 0.5})


def _strongest_pair(truth):
    inter = truth['intercellular']
    active = inter[inter['strength'] > 0]
    lig = active.sort_values('strength', ascending=False).iloc[0]['ligand']
    rows = active[active['ligand'] == lig]
    return lig, rows['receptor'].iloc[0], set(rows['sender_type']), set(
        rows['receiver_type'])


def _receivers(data, senders, receivers):
    """Cells of a receiver type with at least one neighbour of a sender type."""
    types = list(data.cell_type_names)
    ct = data[CELL].cell_type
    is_sender = torch.isin(ct, torch.tensor([types.index(s) for s in senders]))
    is_receiver = torch.isin(ct, torch.tensor([types.index(s) for s in receivers]))
    src, dst = data[NEAR].edge_index
    near = torch.zeros(data.num_cells, dtype=torch.bool)
    near[dst[is_sender[src]]] = True
    return near & is_receiver


@pytest.fixture(scope='module')
def tissue():
    adata = simulate_tissue(50, seed=1, **SIM)
    data, X, t = graph_from_simulation(adata)
    X = data.cells_to_graph(X, dim=1)
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    return adata, data, X, t


@pytest.fixture(scope='module')
def fitted(tissue):
    _, data, _, _ = tissue
    torch.manual_seed(0)
    model = make_model('staged', data.num_genes, data.num_cell_types, **FAST)
    fit(model, data, lr=0.02, holdout=None, progress=False)  # the default 600 epochs
    return model


def test_simulator_truth_ligand_knockout_lowers_receivers_targets():
    # The ground truth itself: knocking out the strongest true ligand (same seed,
    # so the same tissue) lowers its receptor and the receptor's activated
    # downstream target in the receiving cells.
    base = simulate_tissue(50, seed=1, **SIM)
    truth = base.uns['truth']
    lig, rec, senders, receivers = _strongest_pair(truth)
    ko = simulate_tissue(50, seed=1, knockout=lig, **SIM)
    intra = truth['intracellular']
    target = intra[(intra['source'] == rec) & (intra['strength'] > 0.5)]['target'].iloc[0]
    delta = pd.DataFrame(ko.layers['truth'] - base.layers['truth'],
                         columns=base.var_names, index=base.obs_names)
    late = (base.obs['time'] > 2).to_numpy()
    in_receiver = base.obs['cell_type'].isin(receivers).to_numpy()
    assert delta.loc[late & in_receiver, rec].mean() < -0.05
    assert delta.loc[late & in_receiver, target].mean() < -0.01
    assert (ko[:, lig].layers['truth'] == 0).all()
    # cells of no receiver type feel it only through their GRN, far less
    assert abs(delta.loc[late & ~in_receiver, rec].mean()) < \
        abs(delta.loc[late & in_receiver, rec].mean())


def test_fitted_model_ligand_knockout_lowers_receptor_of_receivers(tissue, fitted):
    adata, data, X, t = tissue
    lig, rec, senders, receivers = _strongest_pair(adata.uns['truth'])
    cells = _receivers(data, senders, receivers)
    assert int(cells.sum()) >= 3
    result = perturb(fitted, data, X[0], t, knockout=lig)
    assert isinstance(result, PerturbationResult)
    assert result.baseline.shape == result.perturbed.shape == X.shape
    r = list(data.gene_names).index(rec)
    g = list(data.gene_names).index(lig)
    assert bool((result.perturbed[:, :, g] == 0).all())  # clamped everywhere
    in_receivers = float(result.delta[1:, cells, r].mean())
    elsewhere = float(result.delta[1:, ~cells, r].mean())
    # measured on this seed: -1.04 in receivers, -0.02 elsewhere
    assert in_receivers < -0.1
    assert in_receivers < 2 * elsewhere


def _exact_setup():
    adata = simulate_tissue(30, seed=2, **SIM)
    genes = list(adata.var_names)
    lone = [g for g in genes if g.startswith('G')][-1]
    grn = adata.uns['grn_prior']
    grn = grn[grn['source'] != lone]  # `lone` regulates nothing
    data, X, t = graph_from_simulation(adata, grn=grn)
    return data, data.cells_to_graph(X, dim=1), t, lone


def test_knockout_of_unconnected_gene_changes_nothing_else():
    # A gene that is no GRN source and no ligand has no outgoing edge: by
    # construction, clamping it cannot reach any other gene (fixed-step solver,
    # so that the step sizes do not depend on that gene either).
    data, X, t, lone = _exact_setup()
    torch.manual_seed(0)
    model = make_model('staged', data.num_genes, data.num_cell_types, **FAST)
    result = perturb(model, data, X[0], t, knockout=lone)
    g = list(data.gene_names).index(lone)
    others = [i for i in range(data.num_genes) if i != g]
    assert float(result.delta[:, :, others].abs().max()) <= 1e-6
    assert float(result.delta[:, :, g].abs().max()) > 1e-3  # the gene itself moved
    # ... and only in the selected cells
    result = perturb(model, data, X[0], t, overexpress={lone: 3.0}, cell_types='T0')
    is_t0 = data[CELL].cell_type == list(data.cell_type_names).index('T0')
    assert float(result.delta[:, ~is_t0].abs().max()) <= 1e-6
    assert torch.allclose(result.perturbed[:, is_t0, g], torch.tensor(3.0))


def test_signalling_removal_and_sender_silencing(tissue, fitted):
    # Removing every pair into every cell and silencing every sender type both
    # drop all signalling edges: the same trajectories. Removing one pair into
    # one receiver type changes nothing at t0 and something later.
    adata, data, X, t = tissue
    lig, rec, senders, receivers = _strongest_pair(adata.uns['truth'])
    pairs = [tuple(p) for p in data.lr_pairs]
    removed = perturb(fitted, data, X[0], t, lr_pairs=pairs)
    silenced = perturb(fitted, data, X[0], t,
                       remove_senders=list(data.cell_type_names))
    torch.testing.assert_close(removed.perturbed, silenced.perturbed)
    assert 'removed' in removed.description and 'silenced' in silenced.description
    one = perturb(fitted, data, X[0], t, lr_pairs=[(lig, rec)],
                  cell_types=sorted(receivers))
    assert float(one.delta[0].abs().max()) == 0
    r = list(data.gene_names).index(rec)
    cells = _receivers(data, senders, receivers)
    assert float(one.delta[1:, cells, r].abs().mean()) > 1e-3


def test_to_layers_matches_rows(tmp_path):
    adata = simulate_tissue(20, seed=3, k=4, **SIM)
    traj = read_trajectories(adata, lr_pairs=adata.uns['lr_pairs'],
                             grn=adata.uns['grn_prior'], k=4)
    torch.manual_seed(0)
    model = make_model('staged', traj.num_genes, len(traj.cell_types), **FAST)
    result = perturb(model, traj.data, traj.X_graph[0], traj.t, knockout='L0')
    out = result.to_layers(adata, traj)
    assert 'staged_delta' not in adata.layers  # a copy by default
    for key in ('staged_perturbed', 'staged_baseline', 'staged_delta'):
        assert out.layers[key].shape == adata.shape
    np.testing.assert_allclose(out.layers['staged_delta'],
                               out.layers['staged_perturbed'] - out.layers['staged_baseline'],
                               atol=1e-6)
    # row (cell c, time k) holds the trajectory of that cell at that time
    expected = traj.data.cells_to_input(result.perturbed, dim=1).numpy()
    row = 7
    c = traj.cell_ids.index(adata.obs['cell_id'].iloc[row])
    k = int(np.argmin(np.abs(traj.t.numpy() - adata.obs['time'].iloc[row])))
    np.testing.assert_allclose(out.layers['staged_perturbed'][row], expected[k, c],
                               rtol=1e-5, atol=1e-6)
    l0 = list(adata.var_names).index('L0')
    assert (out.layers['staged_perturbed'][:, l0] == 0).all()
    assert out.uns['staged_perturbation']['description'].startswith('knockout')
    path = tmp_path / 'pert.h5ad'
    out.write_h5ad(path)  # survives h5ad
    with pytest.raises(ValueError, match='observed times'):
        PerturbationResult(result.baseline[:3], result.perturbed[:3], result.t[:3],
                           'x').to_layers(adata, traj)


def test_bad_perturbations_raise(tissue, fitted):
    _, data, X, t = tissue
    with pytest.raises(ValueError, match='Nothing to perturb'):
        perturb(fitted, data, X[0], t)
    with pytest.raises(ValueError, match='not in the gene panel'):
        perturb(fitted, data, X[0], t, knockout='NOPE')
    with pytest.raises(ValueError, match='Unknown cell type'):
        perturb(fitted, data, X[0], t, knockout='L0', cell_types='T9')
    with pytest.raises(ValueError, match='not in the'):
        perturb(fitted, data, X[0], t, lr_pairs=[('L0', 'G0')])


def test_ensemble_perturbation_is_the_members_mean(tissue, fitted):
    _, data, X, t = tissue
    torch.manual_seed(3)
    other = make_model('staged', data.num_genes, data.num_cell_types, **FAST)
    options = dict(knockout='L0', cell_types='T0', lr_pairs=[tuple(data.lr_pairs[0])])
    singles = [perturb(m, data, X[0], t, **options) for m in (fitted, other)]
    both = perturb([fitted, other], data, X[0], t, **options)
    torch.testing.assert_close(both.baseline, (singles[0].baseline + singles[1].baseline) / 2)
    torch.testing.assert_close(both.delta, (singles[0].delta + singles[1].delta) / 2)
    assert not torch.allclose(singles[0].delta, singles[1].delta)
    assert both.description.startswith(singles[0].description)
    assert 'ensemble of 2' in both.description
    with pytest.raises(ValueError, match='empty sequence'):
        perturb([], data, X[0], t, knockout='L0')


def test_ensemble_perturbation_checks_members_first(tissue, fitted):
    _, data, X, t = tissue
    wrong = make_model('staged', data.num_genes + 1, data.num_cell_types, **FAST)
    with pytest.raises(ValueError, match='Model 1 of the ensemble does not fit'):
        perturb([fitted, wrong], data, X[0], t, knockout='L0')
    with pytest.raises(TypeError, match='flat list'):
        perturb([[fitted, fitted], fitted], data, X[0], t, knockout='L0')
    pairs = (tuple(p) for p in data.lr_pairs[:1])  # a generator: used by every member
    both = perturb([fitted, fitted], data, X[0], t, lr_pairs=pairs)
    one = perturb(fitted, data, X[0], t, lr_pairs=[tuple(data.lr_pairs[0])])
    torch.testing.assert_close(both.delta, one.delta)
    assert one.delta.abs().max() > 0
