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
import math
import os
import shutil
import sys
import time
from typing import List, Optional

from torch_staged._atomic import in_main_thread, write_json_atomic
from torch_staged._demo import ALL_MODELS as DEMO_ALL_MODELS
from torch_staged._demo import MODELS as DEMO_MODELS

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
        library_key=keys.get('library_key'),
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


#: Python keyword advice of library errors -> the command line's flags.
_FLAG_WORDS = (
    (r"missing_genes='drop'", '--missing-genes drop'),
    (r"allow_negative=True", '--allow-negative'),
    (r"spatial_key='<key>'", '--spatial-key KEY'),
    (r"\(spatial_key='([^']*)'\)", r'(--spatial-key \1)'),
    (r"layer='<name>'", '--layer NAME'),
    (r"\(layer='([^']*)'\)", r'(--layer \1)'),
    (r"Pass layer=None to read", 'Leave out --layer to read'),
    (r"pass connectivity_key='<key>', ", ''),
    (r"neighbors='([a-z]+)'", r'--neighbors \1'),
    (r"method='rk4' with a\s+small options=\{'step_size': \.\.\.\}",
     '--method rk4 with a small --step-size'),
    (r"Try a smaller learning rate or step size, tighter tolerances, gradient "
     r"clipping, or standardised expression",
     'Try a smaller --lr or --step-size, tighter --rtol/--atol, or standardised '
     'expression'),
    (r"Try a smaller learning rate, gradient clipping, looser tolerances or",
     'Try a smaller --lr, looser --rtol/--atol or'),
    (r",? or (?:pass )?lr_pairs=None for a model without signalling", ''),
    (r",? or fit without signalling \(lr_pairs=None\)", ''),
    (r",? or pass cell_types=\[\.\.\.\] listing every type", ''),
    (r"genes=None", 'no --genes'),
    (r"[Ll]ower the learning rate 'lr'", 'Lower --lr'),
    (r"'num_genes'", '--genes'), (r"num_genes=", '--genes '),
    (r"'num_cell_types'", '--cell-types'), (r"'num_cells'", '--cells'),
    (r"'num_pairs'", '--pairs'), (r"'num_decoy_pairs'", '--decoy-pairs'),
    (r"'k'", '--k'),
)


def _flag_words(text: str) -> str:
    """Rewrites the Python keyword advice of a library error in flag names."""
    import re
    for pattern, replacement in _FLAG_WORDS:
        text = re.sub(pattern, replacement, text)
    return text


# ----------------------------------------------------------------- simulate
def _simulate(args: argparse.Namespace) -> None:
    import numpy as np

    from torch_staged.sim import simulate_tissue

    if not args.out.endswith('.h5ad'):
        raise CLIError(f"--out '{args.out}' must end in .h5ad")
    _check_simulate_numbers(args)
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


def _check_simulate_numbers(args: argparse.Namespace) -> None:
    """The simulator's constraints, in flag names."""
    for name, low in (('cells', 2), ('genes', 1), ('cell_types', 1), ('pairs', 0),
                      ('decoy_pairs', 0), ('k', 1), ('times', 2), ('seed', 0)):
        if getattr(args, name) < low:
            raise CLIError(f"--{name.replace('_', '-')} must be at least {low} (got "
                           f"{getattr(args, name)})")
    needed = 2 * (args.pairs + args.decoy_pairs) + args.pairs
    if args.genes < max(needed, 2):
        raise CLIError(f"--genes {args.genes} is too few for --pairs {args.pairs} and "
                       f"--decoy-pairs {args.decoy_pairs}: a ligand and a receptor per "
                       f"pair and a target per true pair need --genes {max(needed, 2)} "
                       f"or more")
    if args.k >= args.cells:
        raise CLIError(f"--k {args.k} must be smaller than --cells {args.cells}")
    if args.noise < 0:
        raise CLIError(f"--noise must be >= 0 (got {args.noise})")
    if not args.t_max > 0:
        raise CLIError(f"--t-max must be positive (got {args.t_max})")


# ---------------------------------------------------------------- run status
#: Files a run directory may hold (removed by ``fit --overwrite``).
RUN_FILES = (CHECKPOINT, RUN_JSON, 'metrics.json', 'history.json', 'trajectories.h5ad',
             'intracellular.csv', 'intercellular.csv', 'loss_curves.png',
             'signalling_heatmaps.png', 'spatial_signalling.png')
#: ``fit`` options that ``--resume`` may change; every other one is the run's own.
RESUME_CHANGEABLE = ('epochs', 'patience', 'device', 'threads', 'quiet', 'distributed',
                     'checkpoint_seconds')
#: the options of runs written before they existed, as those runs were fitted
RESUME_LEGACY = {'state_scores': True, 'value_channels': 0, 'val_every': 1,
                 'gene_weights': 'none'}
#: ``fit`` options not stored in ``run.json``.
_NOT_STORED = ('handler', 'command', 'resume', 'overwrite')


def _read_run_json(folder: str) -> Optional[dict]:
    """The ``run.json`` of :obj:`folder` (:obj:`None` if there is none)."""
    path = os.path.join(folder, RUN_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            run = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CLIError(f"'{path}' is not valid JSON: {err}") from None
    if not isinstance(run, dict) or run.get('format') != RUN_FORMAT:
        raise CLIError(f"'{path}' is not a torch-staged run (format "
                       f"{run.get('format') if isinstance(run, dict) else None!r}, "
                       f"expected {RUN_FORMAT!r})")
    return run


def _epochs_done(folder: str) -> int:
    """Epochs recorded in the run's ``history.json`` (0 if none)."""
    try:
        with open(os.path.join(folder, 'history.json')) as f:
            return len(json.load(f)['history'])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _set_status(folder: str, run: dict, status: str, **extra) -> None:
    """Records the run's status (``running``, ``interrupted``, ``diverged``,
    ``failed``, ``writing``, ``complete``) in ``run.json``.
    """
    run.update(status=status, epochs_done=_epochs_done(folder), **extra)
    if status == 'complete':
        run.pop('error', None)
    write_json_atomic(os.path.join(folder, RUN_JSON), run)


def _unfinished(path: str, run: dict) -> Optional[str]:
    """Why the run at :obj:`path` cannot be used yet (:obj:`None`: it can)."""
    status = run.get('status', 'complete')  # runs written before statuses existed
    if status == 'complete':
        return None
    done = run.get('epochs_done', _epochs_done(path))
    total = (run.get('fit') or {}).get('epochs', '?')
    if status == 'diverged':
        return (f"'{path}' holds a fit that diverged after {done} epoch(s) "
                f"({run.get('error', '')}); refit with a lower --lr and --overwrite")
    if status == 'writing':
        return (f"'{path}' holds a fit whose outputs were not all written; finish it "
                f"with: torch-staged fit --resume {path}")
    return (f"'{path}' holds an unfinished fit (status '{status}', {done} of {total} "
            f"epochs); continue it with: torch-staged fit --resume {path}")


# ---------------------------------------------------------------------- fit
def _check_fit_numbers(args: argparse.Namespace) -> None:
    """Rejects impossible numbers before anything is read."""
    for name in ('epochs', 'hidden', 'mlp', 'k', 'threads', 'tiles_per_step',
                 'val_every'):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be a positive integer "
                           f"(got {getattr(args, name)})")
    for name in ('type_dim', 'value_channels'):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 0 "
                           f"(got {getattr(args, name)})")
    if args.patience is not None and args.patience < 1:
        raise CLIError(f"--patience must be a positive integer (got {args.patience})")
    for name in ('lr', 'rtol', 'atol'):
        if not getattr(args, name) > 0:
            raise CLIError(f"--{name} must be positive (got {getattr(args, name)})")
    if args.step_size is not None and not args.step_size > 0:
        raise CLIError(f"--step-size must be positive (got {args.step_size})")
    if args.tile_size is not None and not args.tile_size > 0:
        raise CLIError(f"--tile-size must be positive (got {args.tile_size})")
    if args.divergence != 0 and not args.divergence > 1:
        raise CLIError(f"--divergence must be above 1, or 0 to stop only on NaN/Inf "
                       f"(got {args.divergence})")
    from torchdiffeq._impl.odeint import SOLVERS
    if args.method not in SOLVERS:
        raise CLIError(f"unknown --method '{args.method}' (one of {sorted(SOLVERS)})")
    if args.holdout < 0:
        raise CLIError(f"--holdout must be >= 0 (got {args.holdout})")
    if not args.checkpoint_seconds >= 0:
        raise CLIError(f"--checkpoint-seconds must be >= 0 (got {args.checkpoint_seconds})")


def _fit_defaults() -> dict:
    """The defaults of every ``fit`` option, by destination."""
    fitp = _subparser(build_parser(), 'fit')
    return {a.dest: a.default for a in fitp._actions if a.dest != 'help'}


def _stored_args(args: argparse.Namespace) -> dict:
    """The ``fit`` options written to ``run.json`` (paths made absolute)."""
    out = {k: v for k, v in vars(args).items() if k not in _NOT_STORED}
    for key in ('data', 'lr_pairs', 'grn'):
        if out.get(key) is not None:
            out[key] = os.path.abspath(out[key])
    return out


def _resume_args(args: argparse.Namespace) -> dict:
    """Fills :obj:`args` from the run of ``--resume``; returns its ``run.json``."""
    folder = args.resume
    if not os.path.isdir(folder):
        raise CLIError(f"--resume '{folder}' does not exist")
    run = _read_run_json(folder)
    if run is None or 'cli' not in run:
        raise CLIError(f"--resume '{folder}' is not a run directory written by "
                       f"torch-staged fit (no {RUN_JSON} with its options)")
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(folder):
        raise CLIError(f"--out '{args.out}' differs from --resume '{folder}': a resumed "
                       f"run stays in its own directory (leave out --out)")
    defaults = _fit_defaults()
    stored = {**{k: v for k, v in RESUME_LEGACY.items() if k not in run['cli']},
              **run['cli']}
    given = _stored_args(args)
    for key, value in stored.items():
        if key in RESUME_CHANGEABLE:
            if given.get(key) == defaults.get(key):
                setattr(args, key, value)
            continue
        now = given.get(key, defaults.get(key))
        if now != defaults.get(key) and now != value:
            flag = 'DATA' if key == 'data' else f"--{key.replace('_', '-')}"
            raise CLIError(
                f"{flag} {now} differs from the run's {value}: --resume continues "
                f"'{folder}' with its own options (only --epochs, --patience, "
                f"--device, --threads, --quiet, --distributed and "
                f"--checkpoint-seconds can change); start "
                f"over with --out {folder} --overwrite instead")
        setattr(args, key, value)
    args.out = folder
    ckpt = os.path.join(folder, run.get('checkpoint', CHECKPOINT))
    done = run.get('epochs_done', _epochs_done(folder))
    if run.get('status') == 'complete' and done >= args.epochs:
        raise CLIError(f"run '{folder}' is complete ({done} epochs); to train it "
                       f"further pass --epochs with more than {done}")
    if not os.path.isfile(ckpt):
        _log(args, f"no checkpoint in '{folder}' yet: starting its fit from epoch 0")
    else:  # the tables of the run itself, as first read
        args.lr_pairs = os.path.join(folder, run['lr_pairs'])
        args.grn = os.path.join(folder, run['grn']) if run.get('grn') else None
    return run


def _check_new_run(args: argparse.Namespace) -> None:
    """``fit`` without ``--resume``: the inputs it needs, and no run to clobber."""
    if args.data is None:
        raise CLIError('give the input .h5ad (DATA), or --resume RUN to continue a run')
    if args.lr_pairs is None:
        raise CLIError('--lr-pairs is required (a CSV of ligand, receptor pairs)')
    if args.out is None:
        raise CLIError('--out is required (the run directory to write)')
    existing = [name for name in (RUN_JSON, CHECKPOINT)
                if os.path.isfile(os.path.join(args.out, name))]
    if not existing:
        return
    if not args.overwrite:
        run = _read_run_json(args.out) if RUN_JSON in existing else None
        status = (run or {}).get('status', 'complete' if run else 'unknown')
        raise CLIError(f"--out '{args.out}' already holds a run (status '{status}'); "
                       f"continue it with --resume {args.out}, or pass --overwrite "
                       f"to replace it")
    for name in RUN_FILES:  # --overwrite: nothing of the old run survives
        try:
            os.remove(os.path.join(args.out, name))
        except FileNotFoundError:  # never written, or removed by another rank
            pass


def _fit(args: argparse.Namespace) -> None:
    import torch

    from torch_staged._allocator import tune_allocator
    from torch_staged.models import STAGED, make_model

    tune_allocator()  # a long run: reuse freed memory (see _allocator)
    # ---- validate everything before the long work ---------------------------------
    stored_run = _resume_args(args) if args.resume else None
    if stored_run is None:
        _check_new_run(args)
    _check_fit_numbers(args)
    device = _device(args.device)
    _need_file(args.lr_pairs, '--lr-pairs file')
    if args.grn is not None:
        _need_file(args.grn, '--grn file')
    adata = _read_h5ad(args.data)
    keys = {'--time-key': args.time_key, '--type-key': args.type_key}
    if not args.snapshots:
        keys['--cell-key'] = args.cell_key
    if args.library_key is not None:
        keys['--library-key'] = args.library_key
    if args.alpha_spatial is not None and not args.snapshots:
        raise CLIError("--alpha-spatial needs --snapshots (it weighs the spatial term of "
                       "the matching of snapshots)")
    if args.align is not None and not (args.snapshots and args.library_key):
        raise CLIError("--align needs --snapshots and --library-key (it aligns the "
                       "sections of consecutive times)")
    _check_obs_keys(adata, keys, args.spatial_key, args.layer)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    genes = _panel(args, adata)
    run = _new_run(args)
    if args.snapshots:
        run['snapshots'] = dict(run['keys'], seed=args.seed, align=args.align,
                                alpha_spatial=args.alpha_spatial)
        _log(args, 'linking snapshots into trajectories (optimal transport) ...')
        adata = _infer(adata, run, genes)
        os.makedirs(args.out, exist_ok=True)
        adata.write_h5ad(os.path.join(args.out, 'trajectories.h5ad'))
        run['keys'] = dict(run['keys'], spatial_key='spatial', layer=None)
    _check_times(args, adata.obs[args.time_key])
    traj = _read_traj(adata, run, args.lr_pairs, args.grn, genes=genes)
    data, X, t = _graph_order(traj)
    T = t.numel()
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    _log(args, f'{traj.num_cells} cells x {T} times x {traj.num_genes} genes, '
               f'{len(traj.cell_types)} cell types, edges {data.edge_counts()}')

    if stored_run is not None and stored_run.get('model_config'):
        # a resumed run rebuilds the model it was trained with (also when the
        # defaults changed since it was written)
        model = STAGED.from_config(stored_run['model_config'])
    else:
        model = make_model('staged', data.num_genes, data.num_cell_types,
                           hidden_channels=args.hidden, mlp_channels=args.mlp,
                           type_dim=args.type_dim, normalize=args.normalize,
                           pair_dim=args.pair_dim, score_state=args.state_scores,
                           value_channels=args.value_channels, method=args.method,
                           rtol=args.rtol, atol=args.atol,
                           options={'step_size': args.step_size} if args.step_size
                           else None)
    units = data
    if args.tile_size is not None:
        from torch_staged.data import tile
        units = tile(data, args.tile_size)
        _log(args, f'{len(units)} spatial tiles of side {args.tile_size} (halo 1)')
    info = None
    if args.distributed:  # launched by torchrun: one process per GPU (or CPU rank)
        from torch_staged.train import init_from_env
        info = init_from_env(device=args.device)
        device = info.device
    main = info is None or info.is_main
    if main:
        _start_run_dir(args, run, stored_run, model, traj, t)
    result, seconds = _train(args, model, units, device, info, run, main)
    if not main:
        return  # rank 0 writes the run directory
    _set_status(args.out, run, 'writing')
    _write_outputs(args, run, model.to(device).eval(), result, seconds, device, traj,
                   data, X, t)
    _set_status(args.out, run, 'complete')


def _panel(args: argparse.Namespace, adata) -> List[str]:
    """The gene panel of ``--genes`` (default: all ``var_names``)."""
    genes = [str(g) for g in adata.var_names]
    if args.genes is None:
        return genes
    panel = [g.strip() for g in args.genes.split(',') if g.strip()]
    if not panel:
        raise CLIError('--genes is empty: give comma-separated gene names, or leave '
                       'it out for all of adata.var_names')
    unknown = [g for g in panel if g not in set(genes)]
    if unknown:
        raise CLIError(f"--genes: {unknown[:10]} are not in adata.var_names")
    return panel


def _check_times(args: argparse.Namespace, times) -> None:
    """Enough observed times for the training windows and ``--holdout``."""
    num_times = int(times.nunique())
    if num_times < 2:
        raise CLIError(f"--time-key '{args.time_key}' has {num_times} distinct "
                       f"time(s); fitting needs at least 2 observed times (3 or more "
                       f"with --holdout)")
    if args.holdout > num_times - 2:
        fix = ('use --holdout 0 (no held-out times)' if num_times == 2 else
               f'use --holdout {num_times - 2} or less')
        raise CLIError(f"--holdout {args.holdout} leaves fewer than two training "
                       f"times of the {num_times} observed times: {fix}")


def _new_run(args: argparse.Namespace) -> dict:
    """The ``run.json`` content known before reading the data."""
    graph = dict(neighbors=args.neighbors, k=args.k, radius=args.radius,
                 max_distance=args.max_distance, autocrine=args.autocrine)
    return dict(
        format=RUN_FORMAT, status='running',
        keys=dict(cell_key=args.cell_key, time_key=args.time_key,
                  type_key=args.type_key, spatial_key=args.spatial_key,
                  layer=args.layer, library_key=args.library_key),
        graph=graph, allow_negative=args.allow_negative,
        missing_genes=args.missing_genes, snapshots=None)


def _start_run_dir(args, run: dict, stored_run: Optional[dict], model, traj, t) -> None:
    """Writes ``run.json`` (status ``running``) and the prior tables before the
    fit, so that an interrupted run says what it is and can be resumed.
    """
    os.makedirs(args.out, exist_ok=True)
    folder = os.path.abspath(args.out)
    lr_copy = (os.path.basename(args.lr_pairs)
               if os.path.dirname(os.path.abspath(args.lr_pairs)) == folder
               else _copy_table(args.lr_pairs, args.out, 'lr_pairs'))
    grn_copy = None
    if args.grn:
        grn_copy = (os.path.basename(args.grn)
                    if os.path.dirname(os.path.abspath(args.grn)) == folder
                    else _copy_table(args.grn, args.out, 'grn'))
    source = (stored_run or {}).get('source') or dict(
        data=os.path.abspath(args.data), lr_pairs=os.path.abspath(args.lr_pairs),
        grn=os.path.abspath(args.grn) if args.grn else None)
    run.update(
        checkpoint=CHECKPOINT, model_config=model.config, genes=list(traj.genes),
        cell_types=list(traj.cell_types), lr_pairs=lr_copy, grn=grn_copy,
        times=[float(v) for v in t.tolist()],
        fit=dict(loss=args.loss, epochs=args.epochs, lr=args.lr, holdout=args.holdout,
                 patience=args.patience, seed=args.seed, hidden=args.hidden,
                 mlp=args.mlp, type_dim=args.type_dim, normalize=args.normalize,
                 pair_dim=args.pair_dim, state_scores=args.state_scores,
                 value_channels=args.value_channels, val_every=args.val_every,
                 gene_weights=args.gene_weights, method=args.method,
                 tile_size=args.tile_size, tiles_per_step=args.tiles_per_step),
        source=source, cli=(stored_run or {}).get('cli') or _stored_args(args))
    run['cli'] = dict(run['cli'], **{k: getattr(args, k) for k in RESUME_CHANGEABLE})
    _set_status(args.out, run, 'running')


def _run_scheduler(ckpt: str):
    """The learning-rate schedule a run was trained with (the constant rate of
    runs from before 7 Dec 2026, when ``fit`` went cosine), so that a resumed
    run continues its own.
    """
    from torch_staged.train import load_checkpoint
    return (load_checkpoint(ckpt).get('fit_config') or {}).get('scheduler', 'cosine')


def _raise_interrupt(signum, frame):  # pragma: no cover - signal handler
    raise KeyboardInterrupt


def _train(args, model, units, device, info, run: dict, main: bool):
    """Runs :func:`~torch_staged.train.fit` (resuming from the run's checkpoint
    if ``--resume``) and records an interruption or divergence in ``run.json``.
    """
    import signal

    from torch_staged.models.staged import IntegrationError
    from torch_staged.train import DivergenceError, fit

    ckpt = os.path.join(args.out, CHECKPOINT)
    resume = ckpt if args.resume and os.path.isfile(ckpt) else None
    schedule = {} if resume is None else {'scheduler': _run_scheduler(resume)}
    holdout = 'time' if args.holdout > 0 else None
    on_term = None
    if in_main_thread():
        on_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    tic = time.perf_counter()
    try:
        result = fit(model, units, loss=args.loss, epochs=args.epochs, lr=args.lr,
                     holdout=holdout, holdout_size=max(args.holdout, 1),
                     patience=args.patience, val_every=args.val_every,
                     gene_weights=None if args.gene_weights == 'none' else args.gene_weights,
                     seed=args.seed, checkpoint=ckpt,
                     resume=resume, tiles_per_step=args.tiles_per_step,
                     divergence=args.divergence or None,
                     history_path=os.path.join(args.out, 'history.json'),
                     checkpoint_seconds=args.checkpoint_seconds or None, **schedule,
                     device=device, distributed=args.distributed,
                     progress=not args.quiet and main, desc='fit')
    except KeyboardInterrupt:
        if main:
            _set_status(args.out, run, 'interrupted')
            print(f"torch-staged fit: interrupted after {run['epochs_done']} epoch(s); "
                  f"continue with: torch-staged fit --resume {args.out}",
                  file=sys.stderr)
        raise _Interrupted() from None
    except DivergenceError as err:
        message = (f"the fit diverged at epoch {err.epoch} ({_diverged_what(err)}): "
                   f"lower --lr (it is {args.lr:g}) and refit with --overwrite")
        if main:
            _set_status(args.out, run, 'diverged', error=message)
        raise CLIError(message) from None
    except IntegrationError as err:
        if main:
            _set_status(args.out, run, 'failed', error=_flag_words(str(err)))
        raise
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
        if info is not None:
            from torch_staged.train import cleanup
            cleanup()
    return result, time.perf_counter() - tic


def _diverged_what(err) -> str:
    """The measured part of a :class:`DivergenceError`, in CLI words."""
    import math
    if not math.isfinite(err.loss):
        return f'the loss became {err.loss}'
    if 'parameter' in str(err):
        return (f'a parameter reached {err.loss:.3g}, over --divergence times its '
                f'start {err.scale:.3g}')
    return (f'loss {err.loss:.3g}, over --divergence times the data\'s scale '
            f'{err.scale:.3g}')


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM during a fit, already reported."""


def _write_outputs(args, run: dict, model, result, seconds: float, device, traj, data,
                   X, t) -> None:
    """``metrics.json``, interaction tables and figures of a fitted run."""
    metrics = _metrics(args, model, result, seconds, device, traj, data, X, t)
    with open(os.path.join(args.out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
    _tables_and_figures(args, model, result, traj, data, X)
    print(f"fit {metrics['epochs']} epochs in {seconds:.1f} s: train loss "
          f"{metrics['final_train_loss']:.4g}"
          + (f", held-out R2 {metrics['heldout_r2']:.3f}" if 'heldout_r2' in metrics
             else '')
          + f'; run written to {args.out}/')


def _metrics(args, model, result, seconds: float, device, traj, data, X, t) -> dict:
    import torch

    from torch_staged.metrics import r2_score

    _log(args, 'scoring the rollout and the held-out times ...')
    T = t.numel()
    data_d = data.to(device)
    Xd, td = X.to(device), t.to(device)
    last = T - 1 - args.holdout
    with torch.no_grad():
        rollout = model(data_d, td, Xd[0]).cpu()
        heldout = model(data_d, td[last:], Xd[last])[1:].cpu() if args.holdout else None
    final = result.history[-1]
    metrics = dict(
        final_train_loss=final['train_loss'],
        final_val_loss=final['val_loss'] if args.holdout else None,
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss if args.holdout else None,
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
    if 'batch' in data['cell'] and getattr(data, 'section_names', None):
        section = data['cell'].batch.cpu()
        metrics['sections'] = {
            str(name): dict(cells=int((section == b).sum()), rollout_r2=float(r2_score(
                rollout[1:, section == b], X[1:, section == b])))
            for b, name in enumerate(data.section_names)}
    return {k: (None if isinstance(v, float) and v != v else v)
            for k, v in metrics.items()}


def _tables_and_figures(args, model, result, traj, data, X) -> None:
    import matplotlib.pyplot as plt

    from torch_staged import plot
    from torch_staged.interpret import (
        edge_scores,
        interaction_tables,
        signalling_heatmaps,
        strongest_pair,
    )
    from torch_staged.typing import SIGNALS

    model_cpu, data_c = model.cpu(), data.cpu()
    tic = time.perf_counter()
    _log(args, 'interaction strengths (per-edge Jacobians) ...')
    scores = edge_scores(model_cpu, data_c, X, method='jacobian')
    intra, inter = interaction_tables(model_cpu, data_c, X, method='jacobian',
                                      scores=scores)
    intra.to_csv(os.path.join(args.out, 'intracellular.csv'), index=False)
    inter.to_csv(os.path.join(args.out, 'intercellular.csv'), index=False)
    _log(args, f'interaction tables written ({time.perf_counter() - tic:.1f} s); '
               f'figures ...')
    plot.loss_curves({'staged': result.history}, os.path.join(args.out, 'loss_curves.png'))
    plt.close('all')
    signalling_heatmaps(inter, traj.cell_types,
                        path=os.path.join(args.out, 'signalling_heatmaps.png'))
    plt.close('all')
    if data_c[SIGNALS].num_edges > 0:
        ligand, receptor = strongest_pair(data_c, scores[SIGNALS])
        pair = [(str(a), str(b)) for a, b in data_c.lr_pairs].index((ligand, receptor))
        plot.spatial_signalling(
            data_c['cell'].pos, plot.incoming_per_cell(data_c, scores[SIGNALS], pair),
            title=f'learned incoming {ligand}->{receptor} signalling (|Jacobian|)',
            cell_type=data_c['cell'].cell_type, type_names=list(traj.cell_types),
            path=os.path.join(args.out, 'spatial_signalling.png'))
        plt.close('all')
    _log(args, f'tables and figures done ({time.perf_counter() - tic:.1f} s)')


# ------------------------------------------------------------- predict, perturb
def _load_run(path: str, device):
    """The ``run.json``, model and prior tables of a finished run directory."""
    from torch_staged.train import load_model
    if not os.path.isdir(path):
        raise CLIError(f"run directory '{path}' does not exist")
    run = _read_run_json(path)
    if run is None:
        hint = (f"it holds only {CHECKPOINT}, not a run written by this version: "
                if os.path.isfile(os.path.join(path, CHECKPOINT)) else '')
        raise CLIError(f"'{path}' is not a torch-staged run directory ({hint}no "
                       f"{RUN_JSON}; create one with 'torch-staged fit')")
    why = _unfinished(path, run)
    if why is not None:
        raise CLIError(why)
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
                             library_key=snap.get('library_key'),
                             align=snap.get('align'),
                             alpha_spatial=snap.get('alpha_spatial'),
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
    if keys.get('library_key'):
        checked['library key'] = keys['library_key']
        _check_obs_keys(adata, checked, keys['spatial_key'], keys['layer'])
    original = adata  # results go back onto the user's own rows
    if run.get('snapshots'):
        _log(args, 'linking snapshots into trajectories (optimal transport) ...')
        adata = _infer(adata, run, run['genes'])
    traj = _read_traj(adata, run, lr_pairs, grn, genes=run['genes'],
                      cell_types=run['cell_types'])
    return original, adata, traj


#: What the runs of an ensemble must share: the data, panel, keys and graph.
ENSEMBLE_SHARED = ('times', 'genes', 'cell_types', 'keys', 'graph', 'snapshots',
                   'allow_negative', 'missing_genes')
#: Defaults of run.json fields that older runs do not write.
_FIELD_DEFAULTS = {'allow_negative': False, 'missing_genes': 'raise'}


def _shared(run: dict, field: str):
    """A field the runs of an ensemble must share, with unset entries dropped
    (older runs omit some); the linking of snapshots may differ by its seed,
    as the fits do.
    """
    value = run.get(field, _FIELD_DEFAULTS.get(field))
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None
                 and not (field == 'snapshots' and k == 'seed')}
        if field == 'snapshots' and value.get('alpha_spatial') == 0.0:
            del value['alpha_spatial']  # the default: expression only
    return value


def _difference(field: str, a, b) -> str:
    if field == 'snapshots' and (a is None) != (b is None):
        return 'one was fitted with --snapshots and the other not'
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return ', '.join(f'{k} {a.get(k)!r} vs {b.get(k)!r}' for k in keys[:3])
    return f'{a!r} vs {b!r}' if len(repr(a)) + len(repr(b)) < 120 else 'not equal'


def _same_file(a: str, b: str) -> bool:
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        return fa.read() == fb.read()


def _check_ensemble_run(args, path: str, run: dict, other: dict, tables, others) -> None:
    """Raises unless run ``path`` may join RUN's ensemble."""
    for field in ENSEMBLE_SHARED:
        a, b = _shared(run, field), _shared(other, field)
        if a != b:
            raise CLIError(
                f"--ensemble run '{path}' differs from '{args.run}' in its "
                f"{field.replace('_', ' ')} ({_difference(field, a, b)}): the runs of an "
                f"ensemble must be fitted to the same data with the same panel, keys, "
                f"graph and priors (e.g. with another --seed)")
    for flag, mine, theirs in zip(('--lr-pairs', '--grn'), tables, others):
        if (mine is None) != (theirs is None) or (
                mine is not None and not _same_file(mine, theirs)):
            raise CLIError(f"--ensemble run '{path}' was fitted with another {flag} "
                           f"table than '{args.run}'")


def _ensemble_models(args, run: dict, lr_pairs: str, grn: Optional[str], device) -> list:
    """The models of ``predict --ensemble``: runs fitted to the same data, with
    the same panel, keys, graph and prior tables as RUN, each with its own
    --seed. Trajectories from snapshots are inferred once, with RUN's seed.
    """
    models = []
    seen = {os.path.realpath(args.run): args.run}
    seeds = {(run.get('fit') or {}).get('seed'): args.run}
    for path in args.ensemble or []:
        real = os.path.realpath(path)
        if real in seen:
            raise CLIError(f"--ensemble names the run '{path}' twice (also as "
                           f"'{seen[real]}'): give each run once")
        seen[real] = path
        try:
            other, model, other_lr, other_grn = _load_run(path, device)
        except CLIError as err:
            raise CLIError(f'--ensemble: {err}') from None
        _check_ensemble_run(args, path, run, other, (lr_pairs, grn), (other_lr, other_grn))
        seed = (other.get('fit') or {}).get('seed')
        if seed is not None and seed in seeds:
            raise CLIError(f"--ensemble run '{path}' was fitted with the same --seed "
                           f"{seed} as '{seeds[seed]}': an ensemble needs runs of other "
                           f"seeds")
        seeds[seed] = path
        models.append(model)
    return models


def _predict(args: argparse.Namespace) -> None:
    import torch

    from torch_staged.io import write_results

    device = _device(args.device)
    if not args.out.endswith('.h5ad'):
        raise CLIError(f"--out '{args.out}' must end in .h5ad")
    torch.set_num_threads(args.threads)
    run, model, lr_pairs, grn = _load_run(args.run, device)
    models = [model] + _ensemble_models(args, run, lr_pairs, grn, device)
    adata, _, traj = _read_for_run(args, run, lr_pairs, grn)
    what = f'an ensemble of {len(models)} runs' if len(models) > 1 else 'the run'
    _log(args, f'predicting {traj.num_cells} cells x {traj.num_times} times with {what} ...')
    out = write_results(adata, models, traj,
                        key_added=args.key_added,
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
    _, adata, traj = _read_for_run(args, run, lr_pairs, grn)
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

    from torch_staged._allocator import tune_allocator
    from torch_staged._demo import run_demo, summary_table

    tune_allocator()
    torch.set_num_threads(args.threads)
    if args.jobs is not None and args.jobs < 1:
        raise CLIError(f"--jobs must be a positive integer (got {args.jobs})")
    metrics = run_demo(args.out, epochs=args.epochs, holdout=args.holdout, seed=args.seed,
                       progress=not args.quiet, num_cells=args.cells,
                       num_genes=args.genes, jobs=args.jobs,
                       models=tuple(dict.fromkeys(args.models)))
    print(summary_table(metrics))
    print(f'metrics and figures written to {args.out}/')


# ------------------------------------------------------------------- parser
_FORMAT = argparse.ArgumentDefaultsHelpFormatter


def _add_common(p, device: bool = True):
    if device:
        p.add_argument('--device', default=None,
                       help='cpu, cuda or cuda:N (default: cpu)')
    p.add_argument('--threads', type=int, default=1, help='CPU threads of torch')
    p.add_argument('--quiet', action='store_true',
                   help='No progress output (bars on a terminal, log lines otherwise).')


def _add_run_inputs(p):
    p.add_argument('run', help='Run directory written by torch-staged fit.')
    p.add_argument('data', help='Long-format .h5ad with the keys and genes of the run.')
    p.add_argument('--out', required=True, help='Output .h5ad.')
    p.add_argument('--key-added', default='staged', help='Prefix of the written keys.')


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subcommand parser :obj:`name` of :func:`build_parser`'s parser."""
    sub = next(a for a in parser._actions if a.dest == 'command')
    return sub.choices[name]


def _add_simulate(sub) -> None:
    sim = sub.add_parser('simulate', formatter_class=_FORMAT,
                         help='Simulate a ground-truth tissue (.h5ad) and write its '
                         'prior tables (CSV).',
                         description='Simulate a tissue with known GRNs and ligand -> '
                         'receptor couplings. Writes OUT.h5ad, OUT_lr_pairs.csv, '
                         'OUT_grn.csv and OUT_truth_intercellular.csv.')
    sim.add_argument('--out', required=True, help='Output .h5ad.')
    sim.add_argument('--cells', type=int, default=300, help='Number of cells.')
    sim.add_argument('--genes', type=int, default=20,
                     help='Genes per cell (at least 3 x --pairs + 2 x --decoy-pairs).')
    sim.add_argument('--cell-types', type=int, default=3, help='Number of cell types.')
    sim.add_argument('--pairs', type=int, default=4,
                     help='True ligand -> receptor pairs.')
    sim.add_argument('--decoy-pairs', type=int, default=2,
                     help='Ligand -> receptor pairs in the prior table without an effect.')
    sim.add_argument('--k', type=int, default=8, help='Signalling neighbours per cell.')
    sim.add_argument('--noise', type=float, default=0.05,
                     help='Standard deviation of the observation noise.')
    sim.add_argument('--times', type=int, default=17,
                     help='Observation times, evenly spaced on [0, --t-max].')
    sim.add_argument('--t-max', type=float, default=8.0, help='The last observation time.')
    sim.add_argument('--snapshot', action='store_true',
                     help='Observe different cells at each time.')
    sim.add_argument('--seed', type=int, default=0, help='Random seed.')
    sim.add_argument('--lr-pairs-out', default=None,
                     help='Ligand -> receptor CSV (default: OUT_lr_pairs.csv).')
    sim.add_argument('--grn-out', default=None, help='GRN CSV (default: OUT_grn.csv).')
    sim.set_defaults(handler=_simulate)


def _add_fit_inputs(fitp) -> None:
    fitp.add_argument('data', nargs='?', default=None,
                      help='Input .h5ad (long format: one row per cell and time); '
                           'with --resume, the run\'s own.')
    fitp.add_argument('--out', default=None,
                      help='Run directory to write (required unless --resume).')
    fitp.add_argument('--resume', default=None, metavar='RUN',
                      help='Continue the (interrupted) run in directory RUN from its '
                           'checkpoint, with its own data and options.')
    fitp.add_argument('--overwrite', action='store_true',
                      help='Replace a run already in --out (default: refuse).')
    fitp.add_argument('--cell-key', default='cell_id', help='obs column of the cell ids.')
    fitp.add_argument('--time-key', default='time', help='obs column of the times.')
    fitp.add_argument('--type-key', default='cell_type',
                      help='obs column of the cell types.')
    fitp.add_argument('--spatial-key', default='spatial', help='obsm key of positions.')
    fitp.add_argument('--layer', default=None,
                      help='Read layers[LAYER] instead of X (default: X).')
    fitp.add_argument('--genes', default=None,
                      help='Comma-separated gene panel (default: all var_names).')
    fitp.add_argument('--lr-pairs', default=None,
                      help='CSV of ligand -> receptor pairs (columns ligand, receptor); '
                           'required unless --resume.')
    fitp.add_argument('--grn', default=None,
                      help='CSV prior GRN (source, target[, cell_type]) (default: all '
                           'gene pairs).')
    fitp.add_argument('--library-key', default=None,
                      help='obs column naming the section / sample of every row (scverse '
                           'library_key): one block-diagonal graph with no edges between '
                           'sections, per-section tiles and per-section metrics.')
    fitp.add_argument('--align', choices=['rigid', 'affine'], default=None,
                      help='With --snapshots and --library-key: align the sections of '
                           'consecutive times (fused Gromov-Wasserstein + Procrustes) '
                           'into one frame (written to the trajectories); the matching '
                           'uses their aligned positions only with --alpha-spatial.')
    fitp.add_argument('--alpha-spatial', default=None, type=_alpha_spatial,
                      help="With --snapshots: weight of the squared spatial distance in "
                           "the matching cost, a number >= 0 or 'auto' (default: 0, "
                           "expression only, the best on the package's benchmark).")
    fitp.add_argument('--snapshots', action='store_true',
                      help='Different cells at each time (spatial snapshots): link '
                           'them into trajectories by optimal transport first '
                           '(predict/perturb then do the same and write the '
                           'inferred trajectories).')
    fitp.add_argument('--missing-genes', default='raise', choices=('raise', 'drop'),
                      help='What to do with prior rows naming genes outside the panel.')
    fitp.add_argument('--allow-negative', action='store_true',
                      help='Accept negative (centred/scaled) expression.')


def _add_fit_graph(fitp) -> None:
    fitp.add_argument('--neighbors', default='knn',
                      choices=('knn', 'radius', 'delaunay', 'obsp'),
                      help='Spatial neighbourhood of the signalling edges (obsp: '
                           "the squidpy graph obsp['spatial_connectivities']).")
    fitp.add_argument('--k', type=int, default=8, help='Neighbours per cell (knn).')
    fitp.add_argument('--radius', type=float, default=None,
                      help='Neighbourhood radius (radius).')
    fitp.add_argument('--max-distance', type=float, default=None,
                      help='Drop neighbours farther than this (default: keep all).')
    fitp.add_argument('--autocrine', action='store_true',
                      help='Let a cell signal to itself too.')
    fitp.add_argument('--tile-size', type=float, default=None,
                      help='Train on square spatial tiles of this side (halo of one '
                           'neighbour hop); the unit of data parallelism (default: '
                           'the whole tissue).')
    fitp.add_argument('--checkpoint-seconds', type=float, default=10.0,
                      help='Write checkpoint.pt and history.json after the first '
                           'epoch that ends this many seconds after the last write, '
                           'and at the end (0: after every epoch). An interrupted '
                           'run resumes from its last checkpoint.')
    fitp.add_argument('--tiles-per-step', type=int, default=1,
                      help='Tiles (jobs) per optimiser step on each process; N '
                           'processes with --distributed take the same steps as one '
                           'process with N times this.')
    fitp.add_argument('--distributed', action='store_true',
                      help='Data-parallel training over tiles with torch.distributed; '
                           'launch with: torchrun --nproc_per_node=N -m torch_staged.cli '
                           'fit --distributed --tile-size S ...')


def _word_or_number(word: str, number, what: str):
    """An argparse type: :obj:`word`, or a finite number >= 0 read by
    :obj:`number` (``int`` or ``float``).
    """
    def parse(text: str):
        if text == word:
            return text
        try:
            value = number(text)
        except ValueError:
            value = -1
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"expected '{word}' or {what} >= 0 "
                                             f"(got {text!r})")
        return value
    return parse


#: ``--alpha-spatial``: ``auto`` or a number >= 0
_alpha_spatial = _word_or_number('auto', float, 'a number')
#: ``--pair-dim``: ``full`` or a non-negative integer
_pair_dim = _word_or_number('full', int, 'an integer')


def _add_fit_training(fitp) -> None:
    fitp.add_argument('--epochs', type=int, default=2000,
                      help='Epochs to train (with --resume: the new total).')
    fitp.add_argument('--lr', type=float, default=0.03, help='Adam learning rate.')
    fitp.add_argument('--loss', default='derivative',
                      choices=('derivative', 'one_step', 'window', 'rollout'),
                      help='Gradient matching at interval midpoints (no solver, '
                           'fast), one-step, windowed (multiple shooting) or free '
                           'rollout loss.')
    fitp.add_argument('--holdout', type=int, default=2,
                      help='Final time points held out (0: none).')
    fitp.add_argument('--patience', type=int, default=None,
                      help='Early stopping after this many held-out scores without a '
                           'better one (default: never).')
    fitp.add_argument('--val-every', type=int, default=10,
                      help='Score the held-out times every this many epochs.')
    fitp.add_argument('--gene-weights', default='rate',
                      choices=('rate', 'type_rate', 'none'),
                      help='Weigh genes in the loss by the inverse sd of their observed '
                           'rates (per gene, or per cell type and gene), or not.')
    fitp.add_argument('--divergence', type=float, default=1e4,
                      help='Stop when the loss exceeds this many times the data\'s '
                           'scale (0: only on NaN/Inf).')
    fitp.add_argument('--hidden', type=int, default=16,
                      help='Hidden channels of the attention layer.')
    fitp.add_argument('--mlp', type=int, default=32,
                      help='Hidden channels of the per-type MLP.')
    fitp.add_argument('--type-dim', type=int, default=0,
                      help='Cell-type embedding size (0: none). With it, signalling '
                           'can depend on the sender\'s cell type (README, "How well '
                           'it learns": better on sender-specific signalling, worse on '
                           'type-independent signalling).')
    fitp.add_argument('--normalize', default='gate', choices=('gate', 'softmax'),
                      help='Signed tanh gates per edge, or the softmax over a '
                           "target's edges.")
    fitp.add_argument('--pair-dim', type=_pair_dim, default='full',
                      help="Gene-pair term of the attention score: 'full' (a logit per "
                           "gene pair and receiving type), a rank, or 0 (none).")
    fitp.add_argument('--state-scores', action='store_true',
                      help='Let the attention scores see the expression state (default: '
                           'static gates, one learned strength per edge).')
    fitp.add_argument('--value-channels', type=int, default=8,
                      help='Learned non-linear response features of each source gene.')
    fitp.add_argument('--method', default='dopri5',
                      help='torchdiffeq solver (dopri5, rk4, euler, ...).')
    fitp.add_argument('--step-size', type=float, default=None,
                      help='Step of a fixed-step solver (rk4, euler; default: the '
                           'observation grid).')
    fitp.add_argument('--rtol', type=float, default=1e-3,
                      help='Relative tolerance of an adaptive solver.')
    fitp.add_argument('--atol', type=float, default=1e-4,
                      help='Absolute tolerance of an adaptive solver.')
    fitp.add_argument('--seed', type=int, default=0,
                      help='Seed of the initialisation, the job order and the OT.')


def _add_fit(sub) -> None:
    fitp = sub.add_parser('fit', formatter_class=_FORMAT,
                          help='Fit STAGED on a long-format .h5ad into a run directory.',
                          description='Fit STAGED on long-format AnnData (one row per '
                          'cell and time). The run directory gets run.json (written '
                          'first, with the status), checkpoint.pt and history.json '
                          '(every --checkpoint-seconds), metrics.json, the prior '
                          'tables, the '
                          'interaction tables and figures. An interrupted run is '
                          'continued with --resume RUN.')
    _add_fit_inputs(fitp)
    _add_fit_graph(fitp)
    _add_fit_training(fitp)
    _add_common(fitp)
    fitp.set_defaults(handler=_fit)


def _add_perturb(sub) -> None:
    pert = sub.add_parser('perturb', formatter_class=_FORMAT,
                          help='In-silico knockout / overexpression / signalling '
                          'removal with a fitted run.',
                          description='Simulate the fitted model from each cell\'s '
                          'first observed state with and without a perturbation; writes '
                          'layers KEY_perturbed, KEY_baseline, KEY_delta to OUT, and '
                          'OUT_response.png / OUT_response.csv.')
    _add_run_inputs(pert)
    pert.add_argument('--knockout', nargs='+', metavar='GENE',
                      help='Genes clamped to 0.')
    pert.add_argument('--overexpress', nargs='+', metavar='GENE=VALUE',
                      help='Genes clamped to a value.')
    pert.add_argument('--cell-types', nargs='+', metavar='TYPE',
                      help='Perturb only these cell types (default: all cells).')
    pert.add_argument('--cells', nargs='+', metavar='ID',
                      help='Perturb only these cell ids (default: all cells).')
    pert.add_argument('--lr-pair', nargs='+', metavar='LIGAND:RECEPTOR',
                      help='Remove these pairs\' signalling into the selected cells.')
    pert.add_argument('--remove-senders', nargs='+', metavar='TYPE',
                      help='Silence all signalling sent by these cell types.')
    pert.add_argument('--top', type=int, default=6, help='Genes in the response figure.')
    _add_common(pert)
    pert.set_defaults(handler=_perturb)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torch-staged``."""
    parser = _Parser(
        prog='torch-staged', formatter_class=_FORMAT,
        description='STAGED graph neural ODEs of cell-cell communication.')
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)
    _add_simulate(sub)
    _add_fit(sub)

    pred = sub.add_parser('predict', formatter_class=_FORMAT,
                          help="Write a run's predictions and interaction strengths "
                          'into an .h5ad.',
                          description="Predict every cell's expression over the "
                          "observed times with a fitted run (from each cell's first "
                          "observed state) and write the predictions "
                          "(layers['KEY_pred']), the interaction tables (uns['KEY']) "
                          'and the per-edge signalling strengths (obsp) into OUT.')
    _add_run_inputs(pred)
    pred.add_argument('--ensemble', nargs='+', action='extend', default=None,
                      metavar='RUN',
                      help='Further runs fitted to the same data, panel, keys, graph and '
                           'priors with other --seed (after DATA: predict RUN DATA '
                           '--ensemble RUN1 RUN2 --out OUT): the predictions and '
                           "interaction strengths are the mean over all runs (uns['KEY'] "
                           'tables gain abs_score_sd, the spread over the runs).')
    pred.add_argument('--method', default='jacobian', choices=('jacobian', 'attention'),
                      help='How interaction strengths are measured: exact per-edge '
                           'Jacobians or attention weights.')
    _add_common(pred)
    pred.set_defaults(handler=_predict)
    _add_perturb(sub)

    demo = sub.add_parser('demo', formatter_class=_FORMAT,
                          help='Fit STAGED end to end on built-in simulated data and '
                          'write metrics and figures.',
                          description='Simulate the default ground-truth tissue, fit '
                          'STAGED and its cell-autonomous ablation (no_signalling), '
                          'score them and the simple baselines, and write '
                          'metrics.json, checkpoints and figures to OUT.')
    demo.add_argument('--out', default='runs/demo', help='Output folder.')
    demo.add_argument('--cells', type=int, default=300, help='Simulated cells.')
    demo.add_argument('--genes', type=int, default=20, help='Simulated genes.')
    demo.add_argument('--epochs', type=int, default=None,
                      help="Epochs of each fit (default: fit()'s).")
    demo.add_argument('--models', nargs='+', default=list(DEMO_MODELS),
                      choices=list(DEMO_ALL_MODELS), metavar='MODEL',
                      help=f'Models to fit: any of {list(DEMO_ALL_MODELS)}.')
    demo.add_argument('--jobs', type=int, default=None,
                      help='Fits (and the baselines) run in this many parallel '
                           'processes of one thread each (default: one per core).')
    demo.add_argument('--holdout', type=int, default=4,
                      help='Held-out final time points.')
    demo.add_argument('--seed', type=int, default=0, help='Random seed.')
    _add_common(demo, device=False)
    demo.set_defaults(handler=_demo)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = f'missing key {err.args[0]!r}'
    return _flag_words(' '.join(text.split()))


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
    except _Interrupted:
        return 130
    except KeyboardInterrupt:
        print(f'torch-staged {args.command}: interrupted', file=sys.stderr)
        return 130
    return 0


__all__ = ['main', 'build_parser', 'CLIError']

if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
