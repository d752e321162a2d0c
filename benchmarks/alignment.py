r"""Trajectories from sections in different coordinate frames: how well each
method recovers the true states.

The package's simulator (``simulate_tissue(snapshot=True)``) observes a random
half of the cells at every time point. Here the observed cells of every time
are split into ``--sections`` sections (replicates of the same tissue), and
every section is moved by its own random rigid transform: a rotation by a
uniform angle, a mirroring with probability 1/2 and a shift of up to the
tissue's side. Each method turns the snapshots into trajectories of the first
time's cells (the anchors); the figure is the RMSE of the anchors' inferred
states at the later times against their noise-free simulated states
(``uns['truth']['full_trajectories']``), mean ± sd over seeds.

Methods (all :func:`torch_staged.trajectory.infer_trajectories`, entropic OT
``reg=0.05``, matched within cell types):

* ``expression OT``: expression only (``alpha_spatial=0``);
* ``current (spatial, one frame)``: expression + squared distance on the given
  coordinates, as if all sections shared one frame (the method before
  sections were supported; ``alpha_spatial='auto'``, no alignment);
* ``aligned + fused OT``: sections aligned (``align='rigid'``: fused
  Gromov-Wasserstein + Procrustes), then expression + squared distance in the
  common frame (``alpha_spatial='auto'``);
* ``oracle frame``: the same cost on the true, untransformed coordinates (a
  bound, not a method).

Usage::

    python benchmarks/alignment.py --cells 400 --times 5 --sections 2 --seeds 0 1 2
"""
import argparse
import time

import numpy as np

from torch_staged.sim import simulate_tissue
from torch_staged.trajectory import infer_trajectories


def transformed_sections(num_cells: int, num_times: int, sections: int, seed: int):
    """Simulated snapshots with every (time, section) moved by a random rigid
    transform; returns the moved AnnData, the untransformed one and the truth
    ``[T, N, G]``.
    """
    adata = simulate_tissue(num_cells, snapshot=True, seed=seed,
                            times=np.linspace(0.0, 4.0, num_times))
    rng = np.random.default_rng(1000 + seed)
    pos = np.asarray(adata.obsm['spatial'], dtype=np.float64)
    side = float(np.ptp(pos, axis=0).max())
    moved = pos.copy()
    times, time_idx = np.unique(adata.obs['time'].to_numpy(), return_inverse=True)
    library = np.empty(adata.n_obs, dtype=object)
    for k in range(times.size):
        rows = np.flatnonzero(time_idx == k)
        split = rng.integers(0, sections, rows.size)
        for r in range(sections):
            part = rows[split == r]
            angle = rng.uniform(0.0, 2.0 * np.pi)
            rot = np.array([[np.cos(angle), -np.sin(angle)],
                            [np.sin(angle), np.cos(angle)]])
            if rng.random() < 0.5:
                rot = rot @ np.diag([1.0, -1.0])
            moved[part] = pos[part] @ rot.T + rng.uniform(-side, side, 2)
            library[part] = f'day{k}_s{r}'
    out = adata.copy()
    out.obsm['spatial'] = moved
    out.obs['section'] = library.astype(str)
    truth = np.asarray(adata.uns['truth']['full_trajectories'])
    adata.obs['section'] = out.obs['section'].to_numpy()
    return out, adata, truth


def rmse(out, truth) -> float:
    """RMSE of the anchors' inferred states at t_1.. against the truth."""
    T = truth.shape[0]
    ids = out.obs['cell_id'].to_numpy()[:out.n_obs // T].astype(int)
    X = np.asarray(out.X, dtype=np.float64).reshape(T, ids.size, -1)
    return float(np.sqrt(((X[1:] - truth[1:, ids]) ** 2).mean()))


METHODS = {
    'expression OT': lambda moved, true: infer_trajectories(
        moved, cell_key='cell_id', library_key='section', alpha_spatial=0.0),
    'current (spatial, one frame)': lambda moved, true: infer_trajectories(
        moved, cell_key='cell_id', library_key='section', alpha_spatial='auto'),
    'aligned + fused OT (new)': lambda moved, true: infer_trajectories(
        moved, cell_key='cell_id', library_key='section', align='rigid'),
    'oracle frame (bound)': lambda moved, true: infer_trajectories(
        true, cell_key='cell_id', library_key='section', alpha_spatial='auto'),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cells', type=int, default=400)
    parser.add_argument('--times', type=int, default=5)
    parser.add_argument('--sections', type=int, default=2,
                        help='sections per time point')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    args = parser.parse_args(argv)
    scores = {name: [] for name in METHODS}
    seconds = {name: 0.0 for name in METHODS}
    for seed in args.seeds:
        moved, true, truth = transformed_sections(args.cells, args.times,
                                                  args.sections, seed)
        for name, method in METHODS.items():
            tic = time.perf_counter()
            out = method(moved, true)
            seconds[name] += time.perf_counter() - tic
            scores[name].append(rmse(out, truth))
    print(f'{args.cells} cells, {args.times} times, {args.sections} section(s) per '
          f'time, random rotation + mirroring + shift per section, seeds '
          f'{args.seeds}\n')
    print('| method | trajectory RMSE (mean ± sd) | per seed | seconds per run |')
    print('|---|---|---|---|')
    for name in METHODS:
        values = np.asarray(scores[name])
        print(f'| {name} | {values.mean():.3f} ± {values.std():.3f} | '
              f'{", ".join(f"{v:.3f}" for v in values)} | '
              f'{seconds[name] / len(args.seeds):.1f} |')


if __name__ == '__main__':
    main()
