"""The ``torch-staged`` command line.

Subcommands (each with ``--help``):

* ``simulate``: a ground-truth tissue as ``.h5ad`` plus its ligand -> receptor
  and GRN prior tables as CSV;
* ``fit``: fit STAGED on a long-format ``.h5ad`` into a run directory;
* ``predict``: a fitted run's predictions and interaction strengths written
  into an ``.h5ad``;
* ``perturb``: in-silico knockouts / overexpression / signalling removal,
  written as AnnData layers with a response-curve figure;
* ``demo``: the built-in end-to-end demo.

Every user error (a missing file, an unknown key, a gene outside the panel,
...) is one line on stderr, ``torch-staged <command>: error: ...``, and exit
code 2.
"""
import argparse
import json
import os
import shutil
import sys
import time
from typing import List, Optional

#: Format tag of ``run.json``.
RUN_FORMAT = 'torch_staged.run/1'
RUN_JSON = 'run.json'
CHECKPOINT = 'checkpoint.pt'


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block)."""

    def error(self, message):  # pragma: no cover - exercised through main()
        self.exit(2, f'{self.prog}: error: {message}\n')


def _log(args, message: str) -> None:
    if not getattr(args, 'quiet', False):
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- helpers
def _need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise CLIError(f"{what} '{path}' does not exist")
    return path


def _read_h5ad(path: str):
    import anndata as ad
    _need_file(path, 'input file')
    if not path.endswith('.h5ad'):
        raise CLIError(f"'{path}' is not an .h5ad file")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # h5py / anndata errors on a broken file
        raise CLIError(f"cannot read '{path}' as AnnData: "
                       f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                       ) from None


def _write_h5ad(adata, path: str) -> None:
    if not path.endswith('.h5ad'):
        raise CLIError(f"--out '{path}' must end in .h5ad")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    adata.write_h5ad(path)


def _device(name: Optional[str]):
    import torch
    if name is None:
        return torch.device('cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"unknown --device '{name}' (use cpu, cuda or cuda:N)") from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                           f"device(s)")
    elif device.type not in ('cpu', 'mps'):
        raise CLIError(f"unsupported --device '{name}'")
    return device


def _check_obs_keys(adata, keys: dict, spatial_key: str, layer: Optional[str]):
    for option, key in keys.items():
        if key not in adata.obs.columns:
            raise CLIError(f"{option} '{key}' is not a column of adata.obs (it has "
                           f"{list(adata.obs.columns)[:10]})")
    if spatial_key not in adata.obsm:
        raise CLIError(f"--spatial-key '{spatial_key}' is not in adata.obsm (it has "
                       f"{list(adata.obsm.keys())})")
    if layer is not None and layer not in adata.layers:
        raise CLIError(f"--layer '{layer}' is not in adata.layers (it has "
                       f"{list(adata.layers.keys())})")


def _read_traj(adata, run: dict, lr_pairs, grn, genes=None, cell_types=None):
    from torch_staged.io import read_trajectories
    keys = run['keys']
    graph = dict(run['graph'])
    neighbors = graph.pop('neighbors', 'knn')
    return read_trajectories(
        adata, cell_key=keys['cell_key'], time_key=keys['time_key'],
        type_key=keys['type_key'], spatial_key=keys['spatial_key'],
        layer=keys['layer'], genes=genes, lr_pairs=lr_pairs, grn=grn,
        neighbors=neighbors, cell_types=cell_types,
        allow_negative=run.get('allow_negative', False),
        missing_genes=run.get('missing_genes', 'raise'),
        **{k: v for k, v in graph.items() if v is not None})


def _copy_table(path: str, folder: str, name: str) -> str:
    """Copies a prior table into the run directory; returns its file name."""
    ext = os.path.splitext(path)[1].lower() or '.csv'
    target = f'{name}{ext}'
    shutil.copyfile(path, os.path.join(folder, target))
    return target


def _graph_order(traj):
    """``(data, X [T, N, G] graph order, t)``."""
    return traj.data, traj.X_graph, traj.t


# ----------------------------------------------------------------- simulate
def _simulate(args: argparse.Namespace) -> None:
    import numpy as np

    from torch_staged.sim import simulate_tissue

    if not args.out.endswith('.h5ad'):
        raise CLIError(f"--out '{args.out}' must end in .h5ad")
    if args.times < 2:
        raise CLIError(f"--times must be at least 2 (got {args.times})")
    stem = args.out[:-len('.h5ad')]
    lr_out = args.lr_pairs_out or f'{stem}_lr_pairs.csv'
    grn_out = args.grn_out or f'{stem}_grn.csv'
    adata = simulate_tissue(args.cells, num_genes=args.genes,
                            num_cell_types=args.cell_types, num_pairs=args.pairs,
                            num_decoy_pairs=args.decoy_pairs, k=args.k,
                            noise=args.noise, snapshot=args.snapshot, seed=args.seed,
                            times=np.linspace(0.0, args.t_max, args.times))
    _write_h5ad(adata, args.out)
    for path, table in ((lr_out, adata.uns['lr_pairs']), (grn_out, adata.uns['grn_prior'])):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        table.to_csv(path, index=False)
    truth = adata.uns['truth']
    truth_out = f'{stem}_truth_intercellular.csv'
    truth['intercellular'].to_csv(truth_out, index=False)
    print(f'simulated {adata.n_obs} rows ({truth["num_cells"]} cells x '
          f'{len(truth["times"])} times, {adata.n_vars} genes) -> {args.out}')
    print(f'ligand -> receptor pairs -> {lr_out}')
    print(f'GRN prior -> {grn_out}')
    print(f'true intercellular couplings -> {truth_out}')


# ---------------------------------------------------------------------- fit
def _fit(args: argparse.Namespace) -> None:
    import torch

    from torch_staged.interpret import (
        edge_scores,
        interaction_tables,
        signalling_heatmaps,
        spatial_edge_map,
        strongest_pair,
    )
    from torch_staged.metrics import r2_score
    from torch_staged.models import make_model
    from torch_staged.train import fit
    from torch_staged.typing import SIGNALS

    # ---- validate everything before the long work ---------------------------------
    for name in ('epochs', 'hidden', 'mlp', 'k', 'threads'):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name} must be a positive integer (got "
                           f"{getattr(args, name)})")
    if args.type_dim < 0:
        raise CLIError(f"--type-dim must be >= 0 (got {args.type_dim})")
    if not args.lr > 0:
        raise CLIError(f"--lr must be positive (got {args.lr})")
    if args.step_size is not None and not args.step_size > 0:
        raise CLIError(f"--step-size must be positive (got {args.step_size})")
    from torchdiffeq._impl.odeint import SOLVERS
    if args.method not in SOLVERS:
        raise CLIError(f"unknown --method '{args.method}' (one of {sorted(SOLVERS)})")
    if args.holdout < 0:
        raise CLIError(f"--holdout must be >= 0 (got {args.holdout})")
    device = _device(args.device)
    _need_file(args.lr_pairs, '--lr-pairs file')
    if args.grn is not None:
        _need_file(args.grn, '--grn file')
    adata = _read_h5ad(args.data)
    keys = {'--time-key': args.time_key, '--type-key': args.type_key}
    if not args.snapshots:
        keys['--cell-key'] = args.cell_key
    _check_obs_keys(adata, keys, args.spatial_key, args.layer)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    genes = [str(g) for g in adata.var_names]
    if args.genes is not None:
        genes = [g.strip() for g in args.genes.split(',') if g.strip()]
        unknown = [g for g in genes if g not in set(map(str, adata.var_names))]
        if unknown:
            raise CLIError(f"--genes: {unknown[:10]} are not in adata.var_names")
    graph = dict(neighbors=args.neighbors, k=args.k, radius=args.radius,
                 max_distance=args.max_distance, autocrine=args.autocrine)
    run = dict(
        format=RUN_FORMAT,
        keys=dict(cell_key=args.cell_key, time_key=args.time_key,
                  type_key=args.type_key, spatial_key=args.spatial_key,
                  layer=args.layer),
        graph=graph, allow_negative=args.allow_negative,
        missing_genes=args.missing_genes,
        snapshots=None,
    )
    if args.snapshots:
        run['snapshots'] = dict(run['keys'], seed=args.seed)
        _log(args, 'linking snapshots into trajectories (optimal transport) ...')
        adata = _infer(adata, run, genes)
        os.makedirs(args.out, exist_ok=True)
        adata.write_h5ad(os.path.join(args.out, 'trajectories.h5ad'))
        run['keys'] = dict(run['keys'], spatial_key='spatial', layer=None)
    num_times = adata.obs[args.time_key].nunique()
    if args.holdout > num_times - 2:
        raise CLIError(f"--holdout {args.holdout} leaves fewer than two training times "
                       f"of the {num_times} observed times (use at most "
                       f"{max(num_times - 2, 0)})")
    traj = _read_traj(adata, run, args.lr_pairs, args.grn, genes=genes)
    data, X, t = _graph_order(traj)
    T = t.numel()
    if args.holdout > T - 2:
        raise CLIError(f"--holdout {args.holdout} leaves fewer than two training times "
                       f"of the {T} observed times (use at most {T - 2})")
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    _log(args, f'{traj.num_cells} cells x {T} times x {traj.num_genes} genes, '
               f'{len(traj.cell_types)} cell types, edges {data.edge_counts()}')

    os.makedirs(args.out, exist_ok=True)
    model = make_model('staged', data.num_genes, data.num_cell_types,
                       hidden_channels=args.hidden, mlp_channels=args.mlp,
                       type_dim=args.type_dim, method=args.method, rtol=args.rtol,
                       atol=args.atol,
                       options={'step_size': args.step_size} if args.step_size else None)
    ckpt = os.path.join(args.out, CHECKPOINT)
    holdout = 'time' if args.holdout > 0 else None
    units = data
    if args.tile_size is not None:
        from torch_staged.data import tile
        if not args.tile_size > 0:
            raise CLIError(f"--tile-size must be positive (got {args.tile_size})")
        units = tile(data, args.tile_size)
        _log(args, f'{len(units)} spatial tiles of side {args.tile_size} (halo 1)')
    info = None
    if args.distributed:  # launched by torchrun: one process per GPU (or CPU rank)
        from torch_staged.train import cleanup, init_from_env
        info = init_from_env(device=args.device)
        device = info.device
    tic = time.perf_counter()
    try:
        result = fit(model, units, loss=args.loss, epochs=args.epochs, lr=args.lr,
                     holdout=holdout, holdout_size=max(args.holdout, 1),
                     patience=args.patience, seed=args.seed, checkpoint=ckpt,
                     history_path=os.path.join(args.out, 'history.json'),
                     device=device, distributed=args.distributed,
                     progress=not args.quiet and (info is None or info.is_main))
    finally:
        if info is not None:
            cleanup()
    if info is not None and not info.is_main:
        return  # rank 0 writes the run directory
    seconds = time.perf_counter() - tic
    model = model.to(device).eval()

    # ---- metrics -------------------------------------------------------------------
    data_d = data.to(device)
    Xd, td = X.to(device), t.to(device)
    last = T - 1 - args.holdout
    with torch.no_grad():
        rollout = model(data_d, td, Xd[0]).cpu()
        heldout = model(data_d, td[last:], Xd[last])[1:].cpu() if args.holdout else None
    final = result.history[-1]
    metrics = dict(
        final_train_loss=final['train_loss'],
        final_val_loss=final['val_loss'] if holdout else None,
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss if holdout else None,
        epochs=len(result.history), stopped_early=result.stopped_early,
        rollout_r2=float(r2_score(rollout[1:], X[1:])),
        rollout_mse=float(((rollout[1:] - X[1:]) ** 2).mean()),
        fit_seconds=seconds, device=str(device),
        data=dict(file=os.path.abspath(args.data), cells=traj.num_cells, times=T,
                  genes=traj.num_genes, cell_types=len(traj.cell_types),
                  lr_pairs=len(data.lr_pairs), heldout_times=args.holdout,
                  **data.edge_counts()),
    )
    if heldout is not None:
        metrics['heldout_r2'] = float(r2_score(heldout, X[last + 1:]))
        metrics['heldout_mse'] = float(((heldout - X[last + 1:]) ** 2).mean())
    metrics = {k: (None if isinstance(v, float) and v != v else v)
               for k, v in metrics.items()}

    # ---- run directory -----------------------------------------------------------------
    lr_copy = _copy_table(args.lr_pairs, args.out, 'lr_pairs')
    grn_copy = _copy_table(args.grn, args.out, 'grn') if args.grn else None
    run.update(
        checkpoint=CHECKPOINT,
        model_config=model.config,
        genes=list(traj.genes),
        cell_types=list(traj.cell_types),
        lr_pairs=lr_copy,
        grn=grn_copy,
        times=[float(v) for v in t.tolist()],
        fit=dict(loss=args.loss, epochs=args.epochs, lr=args.lr, holdout=args.holdout,
                 patience=args.patience, seed=args.seed, hidden=args.hidden,
                 mlp=args.mlp, type_dim=args.type_dim, method=args.method),
        source=dict(data=os.path.abspath(args.data),
                    lr_pairs=os.path.abspath(args.lr_pairs),
                    grn=os.path.abspath(args.grn) if args.grn else None),
    )
    with open(os.path.join(args.out, RUN_JSON), 'w') as f:
        json.dump(run, f, indent=1)
    with open(os.path.join(args.out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)

    # ---- tables and figures ------------------------------------------------------------
    import matplotlib.pyplot as plt

    from torch_staged import plot
    model_cpu = model.cpu()
    data_c = data.cpu()
    intra, inter = interaction_tables(model_cpu, data_c, X, method='jacobian')
    intra.to_csv(os.path.join(args.out, 'intracellular.csv'), index=False)
    inter.to_csv(os.path.join(args.out, 'intercellular.csv'), index=False)
    plot.loss_curves({'staged': result.history}, os.path.join(args.out, 'loss_curves.png'))
    plt.close('all')
    signalling_heatmaps(inter, traj.cell_types,
                        path=os.path.join(args.out, 'signalling_heatmaps.png'))
    plt.close('all')
    if data_c[SIGNALS].num_edges > 0:
        scores = edge_scores(model_cpu, data_c, X, method='jacobian')[SIGNALS]
        pair = strongest_pair(data_c, scores)
        spatial_edge_map(data_c, scores, *pair,
                         path=os.path.join(args.out, 'spatial_signalling.png'))
        plt.close('all')
    print(f"fit {metrics['epochs']} epochs in {seconds:.1f} s: train loss "
          f"{metrics['final_train_loss']:.4g}"
          + (f", held-out R2 {metrics['heldout_r2']:.3f}" if heldout is not None else '')
          + f'; run written to {args.out}/')


# ------------------------------------------------------------- predict, perturb
def _load_run(path: str, device):
    from torch_staged.train import load_model
    if not os.path.isdir(path):
        raise CLIError(f"run directory '{path}' does not exist")
    run_file = os.path.join(path, RUN_JSON)
    if not os.path.isfile(run_file):
        raise CLIError(f"'{path}' is not a torch-staged run directory (no {RUN_JSON}; "
                       f"create one with 'torch-staged fit')")
    try:
        with open(run_file) as f:
            run = json.load(f)
    except json.JSONDecodeError as err:
        raise CLIError(f"'{run_file}' is not valid JSON: {err}") from None
    if run.get('format') != RUN_FORMAT:
        raise CLIError(f"'{run_file}' is not a torch-staged run (format "
                       f"{run.get('format')!r}, expected {RUN_FORMAT!r})")
    ckpt = os.path.join(path, run.get('checkpoint', CHECKPOINT))
    _need_file(ckpt, 'checkpoint')
    model, _ = load_model(ckpt, map_location='cpu')
    model = model.to(device).eval()
    lr_pairs = _need_file(os.path.join(path, run['lr_pairs']), 'ligand -> receptor table')
    grn = (_need_file(os.path.join(path, run['grn']), 'GRN table') if run.get('grn')
           else None)
    return run, model, lr_pairs, grn


def _infer(adata, run: dict, genes):
    """Snapshots -> long-format trajectories with the run's original keys."""
    from torch_staged.trajectory import infer_trajectories
    snap = run['snapshots']
    cell_key = snap['cell_key'] if snap['cell_key'] in adata.obs.columns else None
    out = infer_trajectories(adata, snap['time_key'], cell_key=cell_key,
                             type_key=snap['type_key'], spatial_key=snap['spatial_key'],
                             layer=snap['layer'], genes=genes,
                             allow_negative=run.get('allow_negative', False),
                             seed=snap.get('seed', 0))
    if cell_key is None and snap['cell_key'] != 'cell_id':
        out.obs[snap['cell_key']] = out.obs['cell_id']
    return out


def _read_for_run(args, run, lr_pairs, grn):
    adata = _read_h5ad(args.data)
    keys = dict(run.get('snapshots') or run['keys'])
    checked = {'time key': keys['time_key'], 'type key': keys['type_key']}
    if not run.get('snapshots'):
        checked['cell key'] = keys['cell_key']
    _check_obs_keys(adata, checked, keys['spatial_key'], keys['layer'])
    panel = set(map(str, adata.var_names))
    missing = [g for g in run['genes'] if g not in panel]
    if missing:
        raise CLIError(f"{len(missing)} gene(s) of the model's panel are not in "
                       f"adata.var_names, e.g. {missing[:10]}")
    if run.get('snapshots'):
        _log(args, 'linking snapshots into trajectories (optimal transport) ...')
        adata = _infer(adata, run, run['genes'])
    traj = _read_traj(adata, run, lr_pairs, grn, genes=run['genes'],
                      cell_types=run['cell_types'])
    return adata, traj


def _predict(args: argparse.Namespace) -> None:
    import torch

    from torch_staged.io import write_results

    device = _device(args.device)
    if not args.out.endswith('.h5ad'):
        raise CLIError(f"--out '{args.out}' must end in .h5ad")
    torch.set_num_threads(args.threads)
    run, model, lr_pairs, grn = _load_run(args.run, device)
    adata, traj = _read_for_run(args, run, lr_pairs, grn)
    _log(args, f'predicting {traj.num_cells} cells x {traj.num_times} times ...')
    out = write_results(adata, model, traj, key_added=args.key_added,
                        method=args.method, model_genes=run['genes'],
                        model_cell_types=run['cell_types'])
    _write_h5ad(out, args.out)
    print(f"predictions in layers['{args.key_added}_pred'], interaction tables in "
          f"uns['{args.key_added}'] -> {args.out}")


def _parse_overexpress(items) -> dict:
    out = {}
    for item in items or []:
        gene, sep, value = item.partition('=')
        if not sep or not gene:
            raise CLIError(f"--overexpress '{item}' must be GENE=VALUE")
        try:
            out[gene] = float(value)
        except ValueError:
            raise CLIError(f"--overexpress '{item}': '{value}' is not a number") from None
    return out


def _parse_pairs(items) -> list:
    pairs = []
    for item in items or []:
        for sep in ('->', '^', ':', ','):
            if sep in item:
                lig, rec = (s.strip() for s in item.split(sep, 1))
                break
        else:
            raise CLIError(f"--lr-pair '{item}' must be LIGAND:RECEPTOR")
        pairs.append((lig, rec))
    return pairs


def _perturb(args: argparse.Namespace) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from torch_staged._perturb import _cell_mask, perturb
    from torch_staged.interpret import response_curves, response_table

    device = _device(args.device)
    if not args.out.endswith('.h5ad'):
        raise CLIError(f"--out '{args.out}' must end in .h5ad")
    overexpress = _parse_overexpress(args.overexpress)
    pairs = _parse_pairs(args.lr_pair)
    if not (args.knockout or overexpress or pairs or args.remove_senders):
        raise CLIError('nothing to perturb: give --knockout, --overexpress, --lr-pair '
                       'or --remove-senders')
    torch.set_num_threads(args.threads)
    run, model, lr_pairs, grn = _load_run(args.run, device)
    panel = run['genes']
    for gene in list(args.knockout or []) + list(overexpress):
        if gene not in panel:
            raise CLIError(f"gene '{gene}' is not in the model's gene panel "
                           f"({len(panel)} genes, e.g. {panel[:5]})")
    types = run['cell_types']
    for name in list(args.cell_types or []) + list(args.remove_senders or []):
        if name not in types:
            raise CLIError(f"cell type '{name}' is not one of the model's cell types "
                           f"{types}")
    adata, traj = _read_for_run(args, run, lr_pairs, grn)
    known = {(str(a), str(b)) for a, b in traj.data.lr_pairs}
    for pair in pairs:
        if pair not in known:
            raise CLIError(f"ligand -> receptor pair {pair[0]}:{pair[1]} is not in the "
                           f"run's table (e.g. {sorted(known)[:5]})")
    rows = None
    if args.cells:
        ids = {str(c): i for i, c in enumerate(traj.cell_ids)}
        unknown = [c for c in args.cells if c not in ids]
        if unknown:
            raise CLIError(f"--cells: unknown cell id(s) {unknown[:10]} (column "
                           f"'{run['keys']['cell_key']}')")
        rows = np.asarray([ids[c] for c in args.cells], dtype=np.int64)
    data, X, t = _graph_order(traj)
    data = data.to(device)
    _log(args, f'simulating {traj.num_cells} cells x {traj.num_times} times with and '
               f'without the perturbation ...')
    result = perturb(model, data, X[0].to(device), t.to(device),
                     knockout=args.knockout or None, overexpress=overexpress or None,
                     cells=rows, cell_types=args.cell_types or None,
                     lr_pairs=pairs or None, remove_senders=args.remove_senders or None)
    result.baseline, result.perturbed = result.baseline.cpu(), result.perturbed.cpu()
    result.t = result.t.cpu()
    traj.data = data.cpu()
    out = result.to_layers(adata, traj, key_added=args.key_added)
    stem = args.out[:-len('.h5ad')]
    table = response_table(result, traj.genes)
    out.uns[f'{args.key_added}_perturbation']['mean_delta'] = table.reset_index()
    _write_h5ad(out, args.out)
    table.to_csv(f'{stem}_response.csv')
    selected = _cell_mask(traj.data, rows, args.cell_types or None)
    clamped = list(args.knockout or []) + list(overexpress)
    response_curves(result, traj.genes, top=args.top, exclude=clamped,
                    path=f'{stem}_response.png')
    plt.close('all')
    effect = table.abs().max(0).drop(clamped, errors='ignore').sort_values(
        ascending=False)
    print(f'{result.description}: {int(selected.sum())} cells selected, largest mean '
          f'responses ' + ', '.join(f'{g} {table[g].iloc[np.abs(table[g]).argmax()]:+.3g}'
                                    for g in effect.index[:args.top]))
    print(f"layers '{args.key_added}_perturbed', '{args.key_added}_baseline', "
          f"'{args.key_added}_delta' -> {args.out}; response curves -> "
          f"{stem}_response.png")


# --------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> None:
    import torch

    from torch_staged._demo import run_demo, summary_table

    torch.set_num_threads(args.threads)
    metrics = run_demo(args.out, epochs=args.epochs, holdout=args.holdout, seed=args.seed,
                       progress=not args.quiet, num_cells=args.cells,
                       num_genes=args.genes)
    print(summary_table(metrics))
    print(f'metrics and figures written to {args.out}/')


# ------------------------------------------------------------------- parser
def _add_common(p, device: bool = True):
    if device:
        p.add_argument('--device', default=None,
                       help='cpu (default), cuda or cuda:N')
    p.add_argument('--threads', type=int, default=1, help='CPU threads (default 1)')
    p.add_argument('--quiet', action='store_true', help='No progress output.')


def _add_run_inputs(p):
    p.add_argument('run', help='Run directory written by torch-staged fit.')
    p.add_argument('data', help='Long-format .h5ad with the keys and genes of the run.')
    p.add_argument('--out', required=True, help='Output .h5ad.')
    p.add_argument('--key-added', default='staged', help='Prefix of the written keys.')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torch-staged``."""
    parser = _Parser(
        prog='torch-staged',
        description='STAGED graph neural ODEs of cell-cell communication.')
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)

    sim = sub.add_parser('simulate', help='Simulate a ground-truth tissue (.h5ad) and '
                         'write its prior tables (CSV).',
                         description='Simulate a tissue with known GRNs and ligand -> '
                         'receptor couplings. Writes OUT.h5ad, OUT_lr_pairs.csv, '
                         'OUT_grn.csv and OUT_truth_intercellular.csv.')
    sim.add_argument('--out', required=True, help='Output .h5ad.')
    sim.add_argument('--cells', type=int, default=300)
    sim.add_argument('--genes', type=int, default=20)
    sim.add_argument('--cell-types', type=int, default=3)
    sim.add_argument('--pairs', type=int, default=4, help='true ligand -> receptor pairs')
    sim.add_argument('--decoy-pairs', type=int, default=2)
    sim.add_argument('--k', type=int, default=8, help='signalling neighbours per cell')
    sim.add_argument('--noise', type=float, default=0.05)
    sim.add_argument('--times', type=int, default=17,
                     help='observation times, evenly spaced on [0, --t-max]')
    sim.add_argument('--t-max', type=float, default=8.0)
    sim.add_argument('--snapshot', action='store_true',
                     help='Observe different cells at each time.')
    sim.add_argument('--seed', type=int, default=0)
    sim.add_argument('--lr-pairs-out', default=None,
                     help='ligand -> receptor CSV (default OUT_lr_pairs.csv)')
    sim.add_argument('--grn-out', default=None, help='GRN CSV (default OUT_grn.csv)')
    sim.set_defaults(handler=_simulate)

    fitp = sub.add_parser('fit', help='Fit STAGED on a long-format .h5ad into a run '
                          'directory.',
                          description='Fit STAGED on long-format AnnData (one row per '
                          'cell and time). The run directory gets checkpoint.pt, '
                          'run.json, metrics.json, history.json, lr_pairs.csv, '
                          'grn.csv, interaction tables and figures.')
    fitp.add_argument('data', help='Input .h5ad (long format).')
    fitp.add_argument('--out', required=True, help='Run directory.')
    fitp.add_argument('--cell-key', default='cell_id', help='obs column of the cell ids')
    fitp.add_argument('--time-key', default='time', help='obs column of the times')
    fitp.add_argument('--type-key', default='cell_type',
                      help='obs column of the cell types')
    fitp.add_argument('--spatial-key', default='spatial', help='obsm key of positions')
    fitp.add_argument('--layer', default=None, help='Read layers[LAYER] instead of X.')
    fitp.add_argument('--genes', default=None,
                      help='Comma-separated gene panel (default: all var_names).')
    fitp.add_argument('--lr-pairs', required=True,
                      help='CSV of ligand -> receptor pairs (columns ligand, receptor).')
    fitp.add_argument('--grn', default=None,
                      help='CSV prior GRN (source, target[, cell_type]); default '
                           'all gene pairs.')
    fitp.add_argument('--snapshots', action='store_true',
                      help='Different cells at each time (spatial snapshots): link '
                           'them into trajectories by optimal transport first '
                           '(predict/perturb then do the same and write the '
                           'inferred trajectories).')
    fitp.add_argument('--missing-genes', default='raise', choices=('raise', 'drop'),
                      help='Prior rows naming genes outside the panel.')
    fitp.add_argument('--neighbors', default='knn',
                      choices=('knn', 'radius', 'delaunay', 'obsp'))
    fitp.add_argument('--k', type=int, default=8, help='neighbours per cell (knn)')
    fitp.add_argument('--radius', type=float, default=None)
    fitp.add_argument('--max-distance', type=float, default=None)
    fitp.add_argument('--autocrine', action='store_true')
    fitp.add_argument('--allow-negative', action='store_true',
                      help='Accept negative (centred/scaled) expression.')
    fitp.add_argument('--tile-size', type=float, default=None,
                      help='train on square spatial tiles of this side (halo of one '
                           'neighbour hop); the unit of data parallelism')
    fitp.add_argument('--distributed', action='store_true',
                      help='data-parallel training over tiles with torch.distributed; '
                           'launch with: torchrun --nproc_per_node=N -m torch_staged.cli '
                           'fit --distributed --tile-size S ...')
    fitp.add_argument('--epochs', type=int, default=50)
    fitp.add_argument('--lr', type=float, default=0.01)
    fitp.add_argument('--loss', default='one_step', choices=('one_step', 'window',
                                                             'rollout'))
    fitp.add_argument('--holdout', type=int, default=2,
                      help='final time points held out (0: none)')
    fitp.add_argument('--patience', type=int, default=None,
                      help='early stopping patience (default: none)')
    fitp.add_argument('--hidden', type=int, default=16)
    fitp.add_argument('--mlp', type=int, default=32)
    fitp.add_argument('--type-dim', type=int, default=4)
    fitp.add_argument('--method', default='dopri5',
                      help='torchdiffeq solver (dopri5, rk4, euler, ...)')
    fitp.add_argument('--step-size', type=float, default=None,
                      help='step of a fixed-step solver (rk4, euler; default: '
                           'the observation grid)')
    fitp.add_argument('--rtol', type=float, default=1e-3)
    fitp.add_argument('--atol', type=float, default=1e-4)
    fitp.add_argument('--seed', type=int, default=0)
    _add_common(fitp)
    fitp.set_defaults(handler=_fit)

    pred = sub.add_parser('predict', help="Write a run's predictions and interaction "
                          'strengths into an .h5ad.')
    _add_run_inputs(pred)
    pred.add_argument('--method', default='jacobian', choices=('jacobian', 'attention'),
                      help='interaction strength')
    _add_common(pred)
    pred.set_defaults(handler=_predict)

    pert = sub.add_parser('perturb', help='In-silico knockout / overexpression / '
                          'signalling removal with a fitted run.',
                          description='Simulate the fitted model from each cell\'s '
                          'first observed state with and without a perturbation; writes '
                          'layers KEY_perturbed, KEY_baseline, KEY_delta to OUT, and '
                          'OUT_response.png / OUT_response.csv.')
    _add_run_inputs(pert)
    pert.add_argument('--knockout', nargs='+', metavar='GENE', help='genes clamped to 0')
    pert.add_argument('--overexpress', nargs='+', metavar='GENE=VALUE',
                      help='genes clamped to a value')
    pert.add_argument('--cell-types', nargs='+', metavar='TYPE',
                      help='perturb only these cell types (default: all cells)')
    pert.add_argument('--cells', nargs='+', metavar='ID',
                      help='perturb only these cell ids')
    pert.add_argument('--lr-pair', nargs='+', metavar='LIGAND:RECEPTOR',
                      help='remove these pairs\' signalling into the selected cells')
    pert.add_argument('--remove-senders', nargs='+', metavar='TYPE',
                      help='silence all signalling sent by these cell types')
    pert.add_argument('--top', type=int, default=6, help='genes in the response figure')
    _add_common(pert)
    pert.set_defaults(handler=_perturb)

    demo = sub.add_parser('demo', help='Fit STAGED end to end on built-in simulated '
                          'data and write metrics and figures.')
    demo.add_argument('--out', default='runs/demo', help='Output folder.')
    demo.add_argument('--cells', type=int, default=300, help='simulated cells')
    demo.add_argument('--genes', type=int, default=20, help='simulated genes')
    demo.add_argument('--epochs', type=int, default=30)
    demo.add_argument('--holdout', type=int, default=4,
                      help='held-out final time points')
    demo.add_argument('--seed', type=int, default=0)
    demo.add_argument('--threads', type=int, default=1)
    demo.add_argument('--quiet', action='store_true', help='No progress bar.')
    demo.set_defaults(handler=_demo)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = f'missing key {err.args[0]!r}'
    return ' '.join(text.split())


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``torch-staged`` console script."""
    from torch_staged.models.staged import IntegrationError

    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, one line printed)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if extra:
        print(f"torch-staged {args.command}: error: unrecognized arguments: "
              f"{' '.join(extra)}", file=sys.stderr)
        return 2
    try:
        args.handler(args)
    except (CLIError, FileNotFoundError, ValueError, KeyError, TypeError, OSError,
            IntegrationError) as err:
        print(f'torch-staged {args.command}: error: {_one_line(err)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'torch-staged {args.command}: interrupted', file=sys.stderr)
        return 130
    return 0


__all__ = ['main', 'build_parser', 'CLIError']

if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
