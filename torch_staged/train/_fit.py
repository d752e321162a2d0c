"""The STAGED training loop."""
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from torch_staged._atomic import write_json_atomic
from torch_staged.data.tissue_data import TissueData
from torch_staged.models.staged import STAGED, IntegrationError
from torch_staged.train import _distributed as dist
from torch_staged.train._checkpoint import load_checkpoint, save_checkpoint
from torch_staged.typing import CELL, GENE

logger = logging.getLogger('torch_staged.train')

LOSS_MODES = ('one_step', 'window', 'rollout', 'derivative')
HOLDOUTS = ('time', 'cells', None)
SCHEDULERS = ('plateau', 'cosine', None)


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and the best epoch."""
    history: List[Dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (f'FitResult(epochs={len(self.history)}, best_epoch={self.best_epoch}, '
                f'best_val_loss={self.best_val_loss:.4g}, '
                f"train_loss={last.get('train_loss', float('nan')):.4g}, "
                f'stopped_early={self.stopped_early})')


class DivergenceError(IntegrationError):
    """The training loss became non-finite or grew far beyond the data's scale.

    Attributes ``epoch``, ``step``, ``loss`` (the job's loss) and ``scale`` (the
    loss of predicting zero on the same job) say where and by how much.
    """

    def __init__(self, message: str, epoch: int, step: int, loss: float,
                 scale: float):
        super().__init__(message)
        self.epoch, self.step, self.loss, self.scale = epoch, step, loss, scale


@dataclass
class _Unit:
    """One graph (a tissue or a tile) with its trajectories and masks."""
    data: TissueData
    traj: Tensor  # [T, N*G]
    loss_mask: Tensor  # [N*G] bool, nodes that enter the training loss
    val_mask: Tensor  # [N*G] bool, nodes of the validation metric
    clamp: Optional[Tensor]  # [N*G] bool, nodes that follow their observations
    fused: Optional[Any] = None  # the unit's FusedGeneGraph, built on first use
    weight: Optional[Tensor] = None  # [N*G] per-node loss weights (gene_weights)
    zero_loss: Dict[Tuple[int, int], float] = field(default_factory=dict)


def _windows(mode: str, last: int, width: int) -> List[Tuple[int, int]]:
    """(start, end) time-index windows covering 0..last."""
    if last < 1:
        return []
    if mode == 'one_step':
        return [(k, k + 1) for k in range(last)]
    if mode == 'window':
        return [(k, min(k + width, last)) for k in range(0, last, width)]
    return [(0, last)]


def _prepare_units(data, X, t, holdout, holdout_size, cell_order, device, dtype,
                   generator, rank: int = 0, world_size: int = 1
                   ) -> Tuple[List[_Unit], Tensor, int, int]:
    """The units of this rank (``graphs[rank::world_size]``), the times, the
    last training time index and the total number of graphs.
    """
    graphs = list(data) if isinstance(data, (list, tuple)) else [data]
    if not graphs:
        raise ValueError("'data' is an empty list of tiles")
    if X is not None:
        if len(graphs) != 1:
            raise ValueError("Pass trajectories with data.set_trajectories() "
                             "before tiling; 'X' works with a single tissue only")
        graphs = [graphs[0].clone().set_trajectories(X, t, cell_order)]
    for g in graphs:
        if 'traj' not in g[GENE] or 't' not in g:
            raise ValueError("No trajectories: pass X and t, or call "
                             "data.set_trajectories(X, t) first")
    times = graphs[0].t.to(device=device, dtype=dtype)
    num_times = times.numel()
    if holdout == 'time' and num_times < 3:
        raise ValueError(f"holdout='time' needs at least 3 time points (2 to train "
                         f"on, 1 to hold out; got {num_times}): pass holdout=None")
    if holdout == 'time':
        if not isinstance(holdout_size, int) or not 1 <= holdout_size <= num_times - 2:
            raise ValueError(f"holdout='time' needs an integer holdout_size in "
                             f"1..{num_times - 2} for {num_times} time points "
                             f"(got {holdout_size!r})")
        last_train = num_times - 1 - holdout_size
    else:
        last_train = num_times - 1
    if holdout == 'cells' and not 0 < float(holdout_size) < 1:
        raise ValueError(f"holdout='cells' needs a fraction 0 < holdout_size < 1 "
                         f"(got {holdout_size!r})")

    units = []
    for index, g in enumerate(graphs):
        # every rank draws the held-out cells of every graph, so that the
        # generator's state (and each graph's split) is the same on all ranks
        pick = None
        if holdout == 'cells':
            pick = torch.rand(g.num_cells, generator=generator) < float(holdout_size)
        if index % world_size != rank:
            continue
        g = g.to(device)
        G = g.num_genes
        interior = g[CELL].get('interior', None)
        if interior is None:
            interior = torch.ones(g.num_cells, dtype=torch.bool, device=device)
        clamped = g[CELL].get('clamped', None)
        loss_cells = interior.clone()
        val_cells = interior.clone()
        if pick is not None:
            pick = pick.to(device)
            loss_cells &= ~pick
            val_cells &= pick
        traj = g[GENE].traj.t().to(dtype)
        units.append(_Unit(
            g, traj, loss_cells.repeat_interleave(G), val_cells.repeat_interleave(G),
            None if clamped is None or not bool(clamped.any())
            else clamped.repeat_interleave(G)))
    return units, times, last_train, len(graphs)


def _solve_window(model: STAGED, unit: _Unit, times: Tensor, start: int, end: int,
                  stacked: bool = False) -> Tensor:
    """Predictions ``[end - start, N*G]`` at ``times[start + 1 .. end]``: one
    solve from ``times[start]``, or (:obj:`stacked`) the one-step predictions
    from every observed time ``start .. end - 1``, solved as one stacked problem.
    """
    if unit.fused is None:  # fuse each tile once, not at every step
        unit.fused = model.func.set_graph(unit.data).graph
    if stacked and unit.clamp is None:
        return model.solve_intervals(unit.fused, unit.traj[start:end],
                                     times[start + 1:end + 1] - times[start:end])
    if stacked:  # clamped halo cells follow their own times: one by one
        return torch.cat([_solve_window(model, unit, times, k, k + 1)
                          for k in range(start, end)])
    model.func.set_graph(unit.fused)
    if unit.clamp is not None:
        values = unit.traj.unsqueeze(-1)
        if model.augment:
            values = torch.cat([values, values.new_zeros(
                values.shape[:2] + (model.augment, ))], dim=-1)
        model.func.set_clamp(unit.clamp, times, values)
    state = model.initial_state(unit.data, unit.traj[start])
    out = model.integrate(state, times[start:end + 1])
    return out[1:, :, 0]


def _masked_loss(loss_fn: Callable, pred: Tensor, target: Tensor, mask: Tensor,
                 weight: Optional[Tensor] = None) -> Tensor:
    """``loss_fn`` on the nodes of :obj:`mask`, both sides scaled by the
    nodes' :obj:`weight` (so that MSE weighs node :math:`v` by :math:`w_v^2`).
    """
    if weight is None:
        return loss_fn(pred[:, mask], target[:, mask])
    w = weight[mask]
    return loss_fn(pred[:, mask] * w, target[:, mask] * w)


GENE_WEIGHTS = ('rate', 'type_rate', None)


def _weight_keys(unit: _Unit, by_type: bool) -> Tensor:
    """``[N*G]`` row of each node in the weight table: its gene, or (cell type,
    gene) as ``type * G + gene``.
    """
    gene = unit.data[GENE].gene
    if not by_type:
        return gene
    node_type = unit.data[CELL].cell_type.index_select(0, unit.data[GENE].cell)
    return node_type * unit.data.num_genes + gene


def _gene_weights(units: List[_Unit], times: Tensor, last_train: int,
                  gene_weights: Union[str, Tensor, None], world: int,
                  num_cell_types: int, device) -> Optional[List[Tensor]]:
    r"""Per-node loss weights ``[N*G]`` of every unit (see :func:`fit`). With
    ``'rate'``, :math:`w_g \propto 1 / \max(s_g, 0.1\,\mathrm{median}_h\,
    s_h)` for the standard deviation :math:`s_g` of gene :math:`g`'s
    finite-difference rates over the training cells and intervals (summed over
    all ranks), scaled so that :math:`\overline{w^2} = 1`; ``'type_rate'``
    does the same per (cell type, gene).
    """
    if gene_weights is None or not units:
        return None
    G = units[0].data.num_genes
    if isinstance(gene_weights, Tensor):
        w = gene_weights.detach().to(device=device, dtype=times.dtype).reshape(-1)
        if w.numel() != G or not bool(torch.isfinite(w).all()) or not bool((w > 0).all()):
            raise ValueError(f"'gene_weights' must hold {G} positive finite weights, "
                             f"one per gene (got {list(gene_weights.shape)})")
        return [w.index_select(0, _weight_keys(u, False).to(device)) for u in units]
    by_type = gene_weights == 'type_rate'
    rows = G * (num_cell_types if by_type else 1)
    stats = torch.zeros(3, rows, dtype=torch.float64, device=device)
    dt = (times[1:last_train + 1] - times[:last_train]).unsqueeze(-1)
    for unit in units:
        traj = unit.traj[:last_train + 1]
        slope = ((traj[1:] - traj[:-1]) / dt)[:, unit.loss_mask].double()
        key = _weight_keys(unit, by_type).to(device)[unit.loss_mask]
        key = key.expand(slope.size(0), -1).reshape(-1)
        slope = slope.reshape(-1)
        for row, values in enumerate((torch.ones_like(slope), slope, slope * slope)):
            stats[row].index_add_(0, key, values)
    if world > 1:
        stats = torch.tensor(dist.all_reduce_sum(stats.view(-1).tolist(), device),
                             dtype=torch.float64, device=device).view(3, rows)
    count = stats[0].clamp_min(1)
    sd = (stats[2] / count - (stats[1] / count) ** 2).clamp_min(0).sqrt()
    positive = sd[(sd > 0) & (stats[0] > 1)]
    floor = 0.1 * float(positive.median()) if positive.numel() else 1.0
    w = 1.0 / sd.clamp_min(floor)
    seen = stats[0] > 0
    w = (w / w[seen].pow(2).mean().sqrt()).to(times.dtype)
    return [w.index_select(0, _weight_keys(u, by_type).to(device)) for u in units]


class _Cosine:
    r"""The factor :math:`\tfrac12 (1 + \cos(\pi e / E))` of the learning rate
    at epoch :math:`e` of :math:`E` (0 from :math:`E` on). A closed form of
    the current total, so that a run resumed with more epochs follows the
    schedule of its new total (its learning rate rises again from where that
    schedule is), and an interrupted run resumed with the same total follows
    the schedule it would have followed.
    """

    def __init__(self, epochs: int):
        self.epochs = epochs

    def __call__(self, epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))


def _check_resumed_scheduler(state: Dict[str, Any], scheduler: Optional[str],
                             path) -> None:
    """Raises unless the checkpoint :obj:`state` was trained with
    :obj:`scheduler` (checkpoints without a ``fit_config`` are not checked): a
    schedule switched on resume would not continue the run.
    """
    config = state.get('fit_config') or {}
    if 'scheduler' in config and config['scheduler'] != scheduler:
        raise ValueError(
            f"The checkpoint '{os.fspath(path)}' was trained with "
            f"scheduler={config['scheduler']!r}, not {scheduler!r}: pass "
            f"scheduler={config['scheduler']!r} to resume it (the default became "
            f"'cosine' on 7 Dec 2026), or start a new fit")


def _load_scheduler(sched, state: Dict[str, Any], epochs: int) -> None:
    """Restores a scheduler's state; a cosine schedule keeps the current total
    :obj:`epochs` (its checkpoint may hold another, or be a
    ``CosineAnnealingLR`` of earlier versions) and sets the learning rate of the
    next epoch from it.
    """
    if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
        sched.load_state_dict(state)
        return
    sched.last_epoch = int(state['last_epoch'])
    sched.base_lrs = list(state['base_lrs'])
    for cosine in sched.lr_lambdas:
        cosine.epochs = epochs
    lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(sched.optimizer.param_groups, lrs):
        group['lr'] = lr
    sched._last_lr = lrs


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _zero_loss(unit: _Unit, loss_fn: Callable, a: int, b: int, target: Tensor
               ) -> float:
    """The loss of predicting zero on window ``(a, b)``: the data's scale."""
    if (a, b) not in unit.zero_loss:
        unit.zero_loss[(a, b)] = float(_masked_loss(
            loss_fn, torch.zeros_like(target), target, unit.loss_mask, unit.weight))
    return unit.zero_loss[(a, b)]


def _predict(model: STAGED, unit: _Unit, times: Tensor, a: int, b: int, loss: str,
             stacked: bool) -> Tuple[Tensor, Tensor]:
    r"""Prediction and target ``[b - a, N*G]`` of the job on window ``(a, b)``.

    ``loss='derivative'`` (gradient matching): the vector field at the
    midpoints of the observed intervals against the finite differences,
    :math:`f_\theta(\tfrac{1}{2}(\mathbf{x}_k + \mathbf{x}_{k+1})) \approx
    (\mathbf{x}_{k+1} - \mathbf{x}_k) / (t_{k+1} - t_k)`.
    """
    if loss != 'derivative':
        return (_solve_window(model, unit, times, a, b, stacked),
                unit.traj[a + 1:b + 1])
    if unit.fused is None:
        unit.fused = model.func.set_graph(unit.data).graph
    before, after = unit.traj[a:b], unit.traj[a + 1:b + 1]
    slope = (after - before) / (times[a + 1:b + 1] - times[a:b]).unsqueeze(-1)
    return model.rates(unit.fused, 0.5 * (before + after)), slope


def _check_divergence(value: float, scale: float, divergence: Optional[float],
                      epoch: int, step: int, what: str = 'training') -> None:
    """Raises :class:`DivergenceError` for a non-finite loss, or one above
    :obj:`divergence` times :obj:`scale` (the larger of the loss of predicting
    zero and the fit's first loss).
    """
    where = f"Epoch {epoch}, step {step}" if what == 'training' else f"Epoch {epoch}"
    remedy = ("Lower the learning rate 'lr' (or clip gradients, standardise "
              "the expression)")
    if not math.isfinite(value):
        raise DivergenceError(f"{where}: the {what} loss is {value}. {remedy}",
                              epoch, step, value, scale)
    if divergence is not None and value > divergence * max(scale, 1e-30):
        raise DivergenceError(
            f"{where}: the fit diverged: {what} loss {value:.3g} is over "
            f"{divergence:g} times the data's scale {scale:.3g} (the loss of "
            f"predicting zero, or the first loss if larger). {remedy}",
            epoch, step, value, scale)


def _largest_parameter(params: List[Tensor]) -> float:
    """The largest absolute value of any parameter (one device sync)."""
    return float(torch.stack([p.detach().abs().max() for p in params]).max())


def _check_parameters(params: List[Tensor], start: float, divergence: Optional[float],
                      epoch: int, step: int) -> None:
    """Raises :class:`DivergenceError` when a parameter grew over
    :obj:`divergence` times the largest one at the start (at least 1): a
    blown-up step, caught before the next (possibly endless) solve.
    """
    if divergence is None or not params:
        return
    largest = _largest_parameter(params)
    if not math.isfinite(largest) or largest > divergence * max(start, 1.0):
        raise DivergenceError(
            f"Epoch {epoch}, step {step}: the fit diverged: a parameter reached "
            f"{largest:.3g}, over {divergence:g} times the largest at the start "
            f"({start:.3g}). Lower the learning rate 'lr'", epoch, step, largest, start)


def _progress_mode(progress: Union[bool, str]) -> Optional[str]:
    """``'bar'``, ``'log'`` or :obj:`None` (silent) from the ``progress`` flag."""
    if progress in (False, None):
        return None
    if progress is True or progress == 'auto':
        return 'bar' if sys.stderr.isatty() else 'log'
    if progress in ('bar', 'log'):
        return progress
    raise ValueError(f"'progress' must be True, False, 'auto', 'bar' or 'log' "
                     f"(got {progress!r})")


def _epoch_line(desc: str, record: Dict[str, float], epochs: int) -> str:
    """One log line per epoch (used when stderr is not a terminal)."""
    val = ('' if math.isnan(record['val_loss'])  # not scored this epoch (val_every)
           else f"val loss {record['val_loss']:.4g} ")
    return (f"{desc}: epoch {record['epoch'] + 1}/{epochs} train loss "
            f"{record['train_loss']:.4g} {val}"
            f"lr {record['lr']:.3g} nfe {record['nfe']} "
            f"({record['seconds']:.1f} s)")


@dataclass
class _Loop:
    """What one training epoch needs (see :func:`_train_epoch`)."""
    model: STAGED
    units: List[_Unit]
    times: Tensor
    windows: List[Tuple[int, int]]
    loss: str
    stacked: bool
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    params: List[Tensor]
    clip_grad: Optional[float]
    divergence: Optional[float]
    per_step: int  # jobs per optimiser step over all ranks
    rank: int
    world: int
    device: torch.device
    generator: torch.Generator
    num_graphs: int
    start_scale: float
    first_loss: Optional[float] = None  # the fit's first loss: a divergence reference


def _job_loss(loop: _Loop, graph_id: int, a: int, b: int, epoch: int, step: int
              ) -> Tensor:
    """The training loss of one (graph, window) job; raises
    :class:`IntegrationError` (naming the job) or :class:`DivergenceError`.
    """
    unit = loop.units[graph_id // loop.world]
    try:
        pred, target = _predict(loop.model, unit, loop.times, a, b, loop.loss,
                                loop.stacked)
    except IntegrationError as err:
        raise IntegrationError(f"Epoch {epoch}, step {step} (graph {graph_id}, window "
                               f"t[{a}]->t[{b}]): {err}") from None
    value = _masked_loss(loop.loss_fn, pred, target, unit.loss_mask, unit.weight)
    loop.first_loss = loop.first_loss or float(value.detach())
    scale = max(_zero_loss(unit, loop.loss_fn, a, b, target), loop.first_loss)
    _check_divergence(float(value.detach()), scale, loop.divergence, epoch, step)
    return value


def _train_epoch(loop: _Loop, epoch: int) -> Tuple[float, int]:
    """One epoch: the shuffled jobs, :attr:`_Loop.per_step` per optimiser step
    (this rank solves those of its graphs). Returns the mean step loss and the
    number of steps.
    """
    windows, world = loop.windows, loop.world
    num_jobs = loop.num_graphs * len(windows)
    order = torch.randperm(num_jobs, generator=loop.generator).tolist()
    jobs = [(i // len(windows), windows[i % len(windows)]) for i in order]
    total, count = 0.0, 0
    for step in range(math.ceil(num_jobs / loop.per_step)):
        chunk = jobs[step * loop.per_step:(step + 1) * loop.per_step]
        group = [j for j in chunk if j[0] % world == loop.rank]  # the graphs it holds
        loop.optimizer.zero_grad(set_to_none=True)
        step_loss, error = 0.0, None
        for graph_id, (a, b) in group:
            try:
                value = _job_loss(loop, graph_id, a, b, epoch, step) / len(chunk)
            except IntegrationError as err:  # DivergenceError included
                error = err
                break
            value.backward()
            step_loss += float(value.detach())
        if world > 1:  # a failure on any rank stops all of them
            error, step_loss = _reduce_failure(error, step_loss, epoch, step,
                                               loop.device)
        if error is not None:
            raise error
        if world > 1:
            dist.all_reduce_gradients(loop.params)
        if loop.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(loop.params, loop.clip_grad)
        loop.optimizer.step()
        _check_parameters(loop.params, loop.start_scale, loop.divergence, epoch, step)
        total += step_loss
        count += 1
    return total / max(count, 1), count


def fit(
    model: STAGED,
    data: Union[TissueData, Sequence[TissueData]],
    X: Optional[Tensor] = None,
    t: Optional[Tensor] = None,
    *,
    loss: str = 'derivative',
    window: int = 4,
    batch_intervals: bool = True,
    epochs: int = 2000,
    lr: float = 3e-2,
    weight_decay: float = 0.0,
    scheduler: Optional[str] = 'cosine',
    clip_grad: Optional[float] = 1.0,
    holdout: Optional[str] = None,
    holdout_size: Union[int, float] = 1,
    patience: Optional[int] = None,
    val_every: int = 10,
    restore_best: bool = True,
    tiles_per_step: int = 1,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    gene_weights: Union[str, Tensor, None] = 'rate',
    cell_order: str = 'input',
    seed: int = 0,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    checkpoint_every: int = 1,
    checkpoint_seconds: Optional[float] = None,
    resume: Optional[Union[str, os.PathLike]] = None,
    history_path: Optional[Union[str, os.PathLike]] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: Union[bool, str] = True,
    desc: str = 'fit',
    divergence: Optional[float] = 1e4,
    callback: Optional[Callable[[Dict[str, float]], None]] = None,
    distributed: bool = False,
) -> FitResult:
    r"""Fits a :class:`~torch_staged.models.STAGED` model to expression trajectories.

    The training loss compares predicted and observed expression over windows of
    the observed times :math:`t_0 < \dots < t_{T-1}`:

    * ``'one_step'``: integrate from each observed :math:`\mathbf{x}(t_k)` to
      :math:`t_{k+1}`;
    * ``'window'``: multiple shooting, from :math:`\mathbf{x}(t_k)` over the
      next :obj:`window` times, for :math:`k = 0, w, 2w, \dots`;
    * ``'rollout'``: one free solve from :math:`\mathbf{x}(t_0)`;
    * ``'derivative'``: gradient matching without a solver (collocation,
      Roesch et al., 2021): the vector field at the midpoint of every
      observed interval against the finite difference,
      :math:`\| f_\theta(\tfrac12(\mathbf{x}_k + \mathbf{x}_{k+1})) -
      (\mathbf{x}_{k+1} - \mathbf{x}_k) / (t_{k+1} - t_k) \|^2`, all
      intervals of a graph in one evaluation. Cheap, and biased when the
      intervals are long compared with the dynamics: a warm start for
      ``'one_step'``.

    Each (graph, window) pair is one job; the jobs are shuffled by :obj:`seed`
    and every :obj:`tiles_per_step` consecutive jobs make one optimiser step
    (Adam). An optional held-out split is scored every :obj:`val_every` epochs:
    the last :obj:`holdout_size` time points (``holdout='time'``, a free rollout
    from the last training time) or a fraction of the cells that never enter the
    loss (``holdout='cells'``, one-step error on those cells).

    Large tissues: pass a list of tiles from :func:`torch_staged.data.tile`
    (trajectories set with :meth:`TissueData.set_trajectories` before tiling);
    the gradients of :obj:`tiles_per_step` tiles are summed per optimiser step. Halo cells follow
    their observations and only interior cells enter the loss.

    Args:
        model (STAGED): The model (trained in place).
        data (TissueData or list): A tissue, or a list of tiles.
        X (Tensor, optional): ``[T, N, G]`` expression (see :obj:`cell_order`);
            else ``data['gene'].traj`` is used.
        t (Tensor, optional): ``[T]`` observation times.
        loss (str, optional): ``'derivative'``, ``'one_step'``, ``'window'`` or
            ``'rollout'``. The default was chosen on ``benchmarks/science.py``
            (README, "How well it learns"): gradient matching recovered the
            interactions better and ran several times faster than one-step
            solves there. (default: :obj:`'derivative'`)
        window (int, optional): Window length of ``'window'``. (default: :obj:`4`)
        batch_intervals (bool, optional): With ``loss='one_step'``, solve all
            intervals of a graph as **one** stacked problem (copies of the
            graph, :meth:`STAGED.solve_intervals`) and take one optimiser step
            per graph: a job is then a graph, not a (graph, interval) pair.
            Memory grows with the number of intervals; :obj:`False` solves them
            one by one, one step each. (default: :obj:`True`)
        epochs (int, optional): Maximum number of epochs. (default: :obj:`2000`)
        lr (float, optional): Learning rate. (default: :obj:`3e-2`)
        weight_decay (float, optional): Adam weight decay. (default: :obj:`0`)
        scheduler (str, optional): ``'cosine'`` (the rate falls from :obj:`lr`
            to 0 over the :obj:`epochs` along a half cosine, so the last
            epochs converge instead of oscillating; a run resumed with more
            epochs follows the schedule of its new total), ``'plateau'`` (halved
            when the monitored loss stops improving) or :obj:`None` (a constant
            rate). (default: :obj:`'cosine'`)
        clip_grad (float, optional): Gradient-norm clipping. (default: :obj:`1.0`)
        holdout (str, optional): ``'time'``, ``'cells'`` or :obj:`None` (every
            interval trains; the monitored loss is the training loss, so
            :obj:`restore_best` returns the epoch of the lowest training
            loss). The default was chosen on ``benchmarks/science.py`` and
            ``benchmarks/knockout.py`` (3 seeds, README "How well it learns"):
            against ``'time'`` (the last training time held out, the best
            held-out rollout restored) it moved the knocked-out ligand's
            receptor by at least half the true change in every seed (53, 132,
            155 % against 51, 27, 172 %), forecast lateral inhibition better
            (0.78 vs 0.88 x persistence) and recovered krumsiek11's GRN
            better (0.999 vs 0.989); a one-frame rollout had picked epoch 559
            of 1000 in one seed, while the GRN recovery still improved. Pass
            ``'time'`` or ``'cells'`` to monitor generalisation or to stop
            early (:obj:`patience`). (default: :obj:`None`)
        holdout_size (int or float, optional): Held-out time points, or fraction
            of cells. (default: :obj:`1`)
        patience (int, optional): Early stopping after this many validations
            without a better validation loss (:obj:`None`: never).
            (default: :obj:`None`)
        val_every (int, optional): Score the held-out split every this many
            epochs (and after the last); only scored epochs can be the best
            epoch. (default: :obj:`10`)
        restore_best (bool, optional): Load the best epoch's parameters at the
            end; :func:`~torch_staged.train.load_model` then returns the same
            parameters from the checkpoint (the last epoch's with
            :obj:`False`). (default: :obj:`True`)
        tiles_per_step (int, optional): Graphs (tiles) per optimiser step.
            (default: :obj:`1`)
        loss_fn (callable, optional): ``loss_fn(pred, target)``. (default: MSE)
        gene_weights (str, Tensor or None, optional): Weights of the genes in
            the loss (both arguments of :obj:`loss_fn` are scaled by them):
            ``'rate'`` weighs gene :math:`g` by the inverse standard deviation of
            its observed rates of change (floored at a tenth of the median
            gene's, mean square weight 1), so that slow genes count as much as
            fast ones, as a per-gene standardised regression would;
            ``'type_rate'`` does so per (cell type, gene); a ``[G]``
            tensor gives them; :obj:`None` weighs every node alike. The default
            was chosen on ``benchmarks/science.py``. (default: :obj:`'rate'`)
        cell_order (str, optional): Order of the cells of :obj:`X`: ``'input'``
            (as given to the builder) or ``'graph'``. (default: :obj:`'input'`)
        seed (int, optional): Seed of the shuffling and of the held-out cells.
        checkpoint (path, optional): Written atomically every
            :obj:`checkpoint_every` epochs (or :obj:`checkpoint_seconds`), after
            the last epoch and at an early stop: config, model / optimiser /
            scheduler state, history, best state and RNG states.
        checkpoint_every (int, optional): Epochs between checkpoints (and
            history files). (default: :obj:`1`)
        checkpoint_seconds (float, optional): Instead of every
            :obj:`checkpoint_every` epochs, write the checkpoint (and the history
            file) after the first epoch that ends at least this many seconds
            after the last write: each write holds the whole history, so writing
            after every one of thousands of short epochs costs a large share
            of the fit (a 2000-epoch fit of the demo tissue: 132 s of CPU with a
            write after every epoch, 90 s with one every 10 s, as without
            checkpoints), while an interrupt loses at most about this many
            seconds of training (resumed bitwise as before). With
            ``distributed=True`` the ranks agree on each write.
            (default: :obj:`None`)
        resume (path, optional): Continue from a checkpoint; on CPU with the same
            seed this gives exactly the parameters of an uninterrupted run.
        history_path (path, optional): Where to write the history as JSON,
            rewritten (atomically) when the checkpoint is (after every epoch by
            default).
        device (optional): Device to train on (model and data are moved).
        progress (bool or str, optional): :obj:`True` (or ``'auto'``): a tqdm
            bar when stderr is a terminal, else one line per epoch on stderr;
            ``'bar'`` or ``'log'`` to choose; :obj:`False`: silent (each epoch
            is still logged at INFO level to the ``torch_staged.train``
            logger). (default: :obj:`True`)
        desc (str, optional): Label of the progress bar and the epoch lines.
            (default: :obj:`'fit'`)
        divergence (float, optional): Stop with a :class:`DivergenceError`
            when a job's training loss, or the held-out loss, exceeds this many
            times the loss of predicting zero on the same data (the data's
            scale) or the fit's first loss, or when a parameter exceeds this
            many times the largest parameter at the start (at least 1);
            :obj:`None`: only non-finite losses stop the fit.
            (default: :obj:`1e4`)
        callback (callable, optional): Called with each epoch's record.
        distributed (bool, optional): Data-parallel training over the ranks of
            the initialised :mod:`torch.distributed` process group (see
            :func:`torch_staged.train.init_from_env`). Every rank passes the
            same model config and the same list of tiles; rank ``r`` of ``W``
            trains on ``data[r::W]``. The (graph, window) jobs are shuffled
            identically on all ranks; at optimiser step ``s`` each rank solves
            the jobs of the next ``tiles_per_step * W`` of the shuffled list
            whose graph it holds, and the gradients are summed over the ranks,
            each job's loss divided by the number of jobs of the step: the same
            jobs in the same optimiser steps as one process with
            ``tiles_per_step * W``, for every loss mode (up to floating-point
            summation order). A rank without a job in a step contributes zero
            gradients, so all do the same number of steps and hold the same
            parameters. The
            validation loss and NFE are reduced over the ranks; rank 0 writes
            the checkpoints and the history file; all ranks can resume from the
            same checkpoint. (default: :obj:`False`)

    For long CPU fits in a Python session, call
    :func:`~torch_staged.train.tune_allocator` once first (the command line
    does), so that the temporaries of every evaluation reuse freed memory.

    Returns:
        :class:`FitResult` (history with ``train_loss``, ``val_loss``, ``lr``
        (the epoch's learning rate), ``nfe``, ``seconds`` per epoch).

    Raises:
        DivergenceError: The loss became non-finite or diverged (see
            :obj:`divergence`); the last checkpoint written is of a good
            epoch (the last one, or with :obj:`checkpoint_seconds` at most
            about that many seconds earlier).
        ValueError: Among others, when :obj:`resume` names a checkpoint
            trained with another :obj:`scheduler` (pass the checkpoint's).
    """
    if loss not in LOSS_MODES:
        raise ValueError(f"'loss' must be one of {LOSS_MODES} (got '{loss}')")
    if not isinstance(gene_weights, Tensor) and gene_weights not in GENE_WEIGHTS:
        raise ValueError(f"'gene_weights' must be one of {GENE_WEIGHTS} or a [G] "
                         f"tensor (got {gene_weights!r})")
    if holdout not in HOLDOUTS:
        raise ValueError(f"'holdout' must be one of {HOLDOUTS} (got '{holdout}')")
    if holdout is None and holdout_size != 1:
        raise ValueError(f"holdout_size={holdout_size!r} has no effect without a held-out "
                         f"split (holdout=None, the default): pass holdout='time' (the "
                         f"last times) or holdout='cells' (a fraction of the cells)")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"'scheduler' must be one of {SCHEDULERS} (got '{scheduler}')")
    for name, value in (('epochs', epochs), ('window', window),
                        ('tiles_per_step', tiles_per_step), ('val_every', val_every),
                        ('checkpoint_every', checkpoint_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"'{name}' must be a positive integer (got {value!r})")
    if not lr > 0:
        raise ValueError(f"'lr' must be positive (got {lr!r})")
    if divergence is not None and not divergence > 1:
        raise ValueError(f"'divergence' must be above 1 or None (got {divergence!r})")
    if checkpoint_seconds is not None and not (
            isinstance(checkpoint_seconds, (int, float)) and checkpoint_seconds >= 0):
        raise ValueError(f"'checkpoint_seconds' must be a number of seconds >= 0 or "
                         f"None (got {checkpoint_seconds!r})")
    mode = _progress_mode(progress)

    device = torch.device(device) if device is not None else model.func.decay.device
    model.to(device)
    dtype = model.func.decay.dtype
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    main = rank == 0
    if world > 1:
        dist.broadcast_module(model)  # same starting point on every rank
    generator = torch.Generator().manual_seed(seed)
    units, times, last_train, num_graphs = _prepare_units(
        data, X, t, holdout, holdout_size, cell_order, device, dtype, generator,
        rank, world)
    weights = _gene_weights(units, times, last_train, gene_weights, world,
                            model.num_cell_types, device)
    for index, unit in enumerate(units):
        unit.weight = None if weights is None else weights[index]
    windows = _windows(loss, last_train, window)
    if not windows:
        raise ValueError("No training window: keep at least two training times")
    stacked = loss == 'derivative' or (loss == 'one_step' and bool(batch_intervals))
    if stacked:  # one job per graph: all its intervals at once
        windows = [(0, last_train)]

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if scheduler == 'plateau':
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5,
                                                           patience=5)
    elif scheduler == 'cosine':
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _Cosine(epochs))
    else:
        sched = None

    fit_config = _json_ready(dict(
        loss=loss, window=window, batch_intervals=bool(batch_intervals), epochs=epochs,
        lr=lr, weight_decay=weight_decay,
        scheduler=scheduler, clip_grad=clip_grad, holdout=holdout,
        holdout_size=holdout_size, patience=patience, val_every=val_every,
        tiles_per_step=tiles_per_step,
        cell_order=cell_order, seed=seed, world_size=world,
        gene_weights=(gene_weights if not isinstance(gene_weights, Tensor)
                      else gene_weights.tolist()),
        restore_best=restore_best))
    result = FitResult()
    best_state = None
    start_epoch = 0
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        if state['config'] != _json_ready(model.config):
            raise ValueError("The checkpoint was written for another model config: "
                             f"{state['config']} != {model.config}")
        _check_resumed_scheduler(state, scheduler, resume)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        if sched is not None and state.get('scheduler') is not None:
            _load_scheduler(sched, state['scheduler'], epochs)
        result.history = list(state['history'])
        best = state.get('best') or {}
        result.best_epoch = int(best.get('epoch', -1))
        result.best_val_loss = float(best.get('val_loss', math.inf))
        best_state = best.get('state')
        torch.set_rng_state(state['rng']['torch'])
        generator.set_state(state['rng']['generator'])
        start_epoch = int(state['epoch']) + 1

    bar = tqdm(range(start_epoch, epochs), disable=mode != 'bar' or not main,
               desc=desc, unit='epoch', dynamic_ncols=True)
    bad_epochs = 0
    if result.history and result.best_epoch >= 0:
        later = result.history[result.best_epoch + 1:]  # scored epochs since the best
        bad_epochs = sum(1 for r in later if holdout is None or not math.isnan(r['val_loss']))
    started = last_write = time.perf_counter()
    first_val = None  # this call's first held-out loss: a divergence reference
    loop = _Loop(model=model, units=units, times=times, windows=windows, loss=loss,
                 stacked=stacked, loss_fn=loss_fn, optimizer=optimizer, params=params,
                 clip_grad=clip_grad, divergence=divergence,
                 per_step=tiles_per_step * world, rank=rank, world=world,
                 device=device, generator=generator,
                 num_graphs=num_graphs,
                 start_scale=_largest_parameter(params) if params else 0.0)
    for epoch in bar:
        tic = time.perf_counter()
        epoch_lr = optimizer.param_groups[0]['lr']  # this epoch's rate
        model.train()
        model.reset_nfe()
        train_loss, count = _train_epoch(loop, epoch)
        nfe = model.nfe
        due = ((epoch + 1) % checkpoint_every == 0 if checkpoint_seconds is None else
               time.perf_counter() - last_write >= checkpoint_seconds)

        checked = holdout is not None and ((epoch + 1) % val_every == 0
                                           or epoch == epochs - 1)
        val_total, val_weight, val_zero = _validate(
            model, units, times, holdout if checked else None, last_train, loss_fn,
            stacked)
        if world > 1:  # a write is due when it is due on any rank
            val_total, val_weight, val_zero, nfe, due = dist.all_reduce_sum(
                [val_total, val_weight, val_zero, nfe, float(due)], device)
            nfe, due = int(nfe), due > 0
        val_loss = val_total / max(val_weight, 1) if checked else None
        if val_loss is not None and val_weight > 0:  # the same on every rank
            first_val = val_loss if first_val is None else first_val
            _check_divergence(val_loss, max(val_zero / val_weight, first_val),
                              divergence, epoch, count, 'held-out')
        # the monitored loss: held-out when scored this epoch, else none (a
        # held-out split) or the training loss (no held-out split)
        monitor = val_loss if holdout is not None else train_loss
        if sched is not None:
            if scheduler != 'plateau':
                sched.step()
            elif monitor is not None:
                sched.step(monitor)
        record = dict(epoch=epoch, train_loss=train_loss,
                      val_loss=val_loss if val_loss is not None else float('nan'),
                      lr=epoch_lr, nfe=nfe,
                      seconds=time.perf_counter() - tic)
        result.history.append(record)
        if monitor is not None and monitor < result.best_val_loss:
            result.best_val_loss, result.best_epoch = float(monitor), epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bad_epochs = 0
        elif monitor is not None:
            bad_epochs += 1
        bar.set_postfix(loss=f'{train_loss:.4g}', val=f'{record["val_loss"]:.4g}',
                        nfe=nfe)
        line = _epoch_line(desc, record, epochs)
        if mode == 'log' and main:
            print(line, file=sys.stderr, flush=True)
        logger.info(line)
        stop = patience is not None and bad_epochs >= patience
        persist = due or stop or epoch == epochs - 1
        if persist:
            last_write = time.perf_counter()
        if checkpoint is not None and persist:
            if main:
                save_checkpoint(checkpoint, dict(
                    config=_json_ready(model.config), fit_config=fit_config,
                    model=model.state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=sched.state_dict() if sched is not None else None,
                    history=result.history, epoch=epoch,
                    best=dict(epoch=result.best_epoch, val_loss=result.best_val_loss,
                              state=best_state),
                    rng=dict(torch=torch.get_rng_state(),
                             generator=generator.get_state())))
            if world > 1:
                dist.barrier()  # the checkpoint is complete before anyone goes on
        # after the checkpoint, so that the history never runs ahead of it
        if history_path is not None and main and persist:
            write_json_atomic(history_path, _history(result, fit_config))
        if callback is not None:
            callback(record)
        if stop:
            result.stopped_early = True
            break
    bar.close()
    result.seconds = time.perf_counter() - started
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if history_path is not None and main:
        write_json_atomic(history_path, _history(result, fit_config))
    return result


def _history(result: FitResult, fit_config: Dict[str, Any]) -> Dict[str, Any]:
    """The content of the history file."""
    return dict(history=result.history, best_epoch=result.best_epoch,
                best_val_loss=result.best_val_loss, stopped_early=result.stopped_early,
                fit_config=fit_config)


def _reduce_failure(error: Optional[Exception], step_loss: float, epoch: int,
                    step: int, device) -> Tuple[Optional[Exception], float]:
    """Shares a failure of any rank with all ranks (so none waits forever)."""
    failed, diverged, step_loss = dist.all_reduce_sum(
        [error is not None, isinstance(error, DivergenceError), step_loss], device)
    if failed and error is None:
        if diverged:
            error = DivergenceError(f"Epoch {epoch}, step {step}: the fit diverged "
                                    "on another rank. Lower the learning rate 'lr'",
                                    epoch, step, math.inf, math.nan)
        else:
            error = IntegrationError(f"Epoch {epoch}, step {step}: the solve "
                                     "failed on another rank")
    return error, step_loss


@torch.no_grad()
def _validate(model: STAGED, units: List[_Unit], times: Tensor, holdout: Optional[str],
              last_train: int, loss_fn: Callable, stacked: bool = False
              ) -> Tuple[float, int, float]:
    """Sum and count of the validation losses of :obj:`units`, and the sum of
    the losses of predicting zero on the same targets.
    """
    if holdout is None:
        return 0.0, 0, 0.0
    model.eval()
    total, weight, zero = 0.0, 0, 0.0
    for unit in units:
        if not bool(unit.val_mask.any()):
            continue
        if holdout == 'time':
            pairs, weights = [(last_train, times.numel() - 1)], 1
        elif stacked:  # all one-step intervals in one solve, weighted as many
            pairs, weights = [(0, times.numel() - 1)], times.numel() - 1
        else:
            pairs, weights = _windows('one_step', times.numel() - 1, 1), 1
        for a, b in pairs:
            pred = _solve_window(model, unit, times, a, b, stacked and holdout != 'time')
            target = unit.traj[a + 1:b + 1]
            total += weights * float(_masked_loss(loss_fn, pred, target, unit.val_mask,
                                                  unit.weight))
            zero += weights * float(_masked_loss(loss_fn, torch.zeros_like(target),
                                                 target, unit.val_mask, unit.weight))
            weight += weights
    model.train()
    return total, weight, zero
