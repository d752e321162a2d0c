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
  sections were supported; weight 1/h^2, no alignment);
* ``aligned + fused OT``: sections aligned (``align='rigid'``: fused
  Gromov-Wasserstein + Procrustes), then expression + squared distance in the
  common frame, weighted ``1/h^2`` or ``alpha_spatial='auto'`` (``r/h^2``).
  With the defaults (``align='rigid'`` alone) the spatial term is off and the
  trajectories are those of expression OT;
* ``smoothed expression OT``: expression OT on each section's expression
  smoothed in space, ``(1 - w) x + w * mean of the 6 nearest cells of the same
  type in the same section`` (``w = 0.25``): spatial structure used without any
  alignment, since neighbourhoods do not depend on the frame (a measured
  alternative, not a package option);
* ``oracle frame``: the same cost on the true, untransformed coordinates (a
  bound, not a method).

``--init-length-scale L`` starts the simulation from spatially patterned states
(``simulate_tissue(init_length_scale=L)``: uniform marginals, neighbours alike),
where the position of a cell carries information about its state; by default
the initial states are independent per cell.

Usage::

    python benchmarks/alignment.py --cells 400 --times 5 --sections 2 --seeds 0 1 2
    python benchmarks/alignment.py --cells 400 --times 5 --sections 2 --seeds 0 1 2 \
        --init-length-scale 3
"""
import argparse
import time

import numpy as np

from torch_staged.sim import simulate_tissue
from torch_staged.trajectory import align_sections, infer_trajectories


def transformed_sections(num_cells: int, num_times: int, sections: int, seed: int,
                         noise: float = 0.05, init_length_scale=None):
    """Simulated snapshots with every (time, section) moved by a random rigid
    transform; returns the moved AnnData, the untransformed one and the truth
    ``[T, N, G]``.
    """
    adata = simulate_tissue(num_cells, snapshot=True, seed=seed, noise=noise,
                            times=np.linspace(0.0, 4.0, num_times),
                            init_length_scale=init_length_scale)
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


def _fixed_alpha(adata) -> float:
    """``1 / h^2``, h^2 the mean squared nearest-neighbour distance of the
    first time's cells within their sections (a spatial term of about 1 one
    cell away)."""
    from torch_staged.trajectory._ot import _mean_sq_nn
    t = adata.obs['time'].to_numpy()
    first = t == t.min()
    section = adata.obs['section'].to_numpy()[first]
    codes = np.unique(section, return_inverse=True)[1]
    return 1.0 / _mean_sq_nn(np.asarray(adata.obsm['spatial'])[first], codes)


def rmse(out, truth) -> float:
    """RMSE of the anchors' inferred states at t_1.. against the truth."""
    T = truth.shape[0]
    ids = out.obs['cell_id'].to_numpy()[:out.n_obs // T].astype(int)
    X = np.asarray(out.X, dtype=np.float64).reshape(T, ids.size, -1)
    return float(np.sqrt(((X[1:] - truth[1:, ids]) ** 2).mean()))


def alignment_error(moved, true) -> tuple:
    """Per section, the RMS distance (in mean nearest-neighbour spacings of the
    truth) between its aligned positions and its true ones, both in the frame
    of the reference section: the median over sections and the fraction of
    sections within 2 spacings.
    """
    from scipy.spatial import cKDTree

    from torch_staged.trajectory._align import procrustes
    out = align_sections(moved, 'section')
    aligned, pos = out.obsm['spatial_aligned'], np.asarray(true.obsm['spatial'])
    table = out.uns['staged_alignment']
    section = moved.obs['section'].to_numpy()
    ref = section == table.index[0]
    A, c = procrustes(aligned[ref], pos[ref], np.eye(int(ref.sum())))
    back = aligned @ A.T + c
    cells = np.unique(pos, axis=0)  # a cell is observed at several times
    spacing = cKDTree(cells).query(cells, k=2)[0][:, 1].mean()
    errors = np.array([np.sqrt(((back[section == name] - pos[section == name]) ** 2
                                ).sum(1).mean()) / spacing for name in table.index[1:]])
    return float(np.median(errors)), float((errors < 2.0).mean())


def smoothed(adata, weight: float = 0.25, k: int = 6):
    """A copy of :obj:`adata` whose expression is ``(1 - weight) x + weight *``
    the mean of the :obj:`k` nearest cells of the same type and section."""
    from scipy.spatial import cKDTree
    X = np.asarray(adata.X, dtype=np.float64)
    Y = X.copy()
    pos = np.asarray(adata.obsm['spatial'], dtype=np.float64)
    group = (adata.obs['section'].astype(str) + '/'
             + adata.obs['cell_type'].astype(str)).to_numpy()
    for name in np.unique(group):
        rows = np.flatnonzero(group == name)
        if rows.size < 2:
            continue
        _, nbr = cKDTree(pos[rows]).query(pos[rows], k=min(k + 1, rows.size))
        Y[rows] = (1 - weight) * X[rows] + weight * X[rows][nbr[:, 1:]].mean(1)
    out = adata.copy()
    out.X = Y.astype(np.asarray(adata.X).dtype)
    return out


METHODS = {
    'expression OT': lambda moved, true: infer_trajectories(
        moved, cell_key='cell_id', library_key='section', alpha_spatial=0.0),
    'smoothed expression OT (w = 0.25)': lambda moved, true: infer_trajectories(
        smoothed(moved), cell_key='cell_id', library_key='section', alpha_spatial=0.0),
    'current (spatial, one frame)': lambda moved, true: infer_trajectories(
        moved, cell_key='cell_id', library_key='section',
        alpha_spatial=_fixed_alpha(moved)),
    'aligned + fused OT, weight 1/h^2': lambda moved, true: infer_trajectories(
        moved, cell_key='cell_id', library_key='section', align='rigid',
        alpha_spatial=_fixed_alpha(moved)),
    'aligned + fused OT, auto weight r/h^2': lambda moved, true:
        infer_trajectories(moved, cell_key='cell_id', library_key='section',
                           align='rigid', alpha_spatial='auto'),
    'true frames, weight 1/h^2 (reference)': lambda moved, true: infer_trajectories(
        true, cell_key='cell_id', library_key='section',
        alpha_spatial=_fixed_alpha(true)),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cells', type=int, default=400)
    parser.add_argument('--times', type=int, default=5)
    parser.add_argument('--sections', type=int, default=2,
                        help='sections per time point')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--noise', type=float, default=0.05,
                        help="the simulator's measurement noise")
    parser.add_argument('--init-length-scale', type=float, default=None,
                        help='spatially patterned initial states of this correlation '
                             'length (in cell spacings; default: independent per cell)')
    args = parser.parse_args(argv)
    scores = {name: [] for name in METHODS}
    align_err, mirror_ok, info = [], [], []
    seconds = {name: 0.0 for name in METHODS}
    for seed in args.seeds:
        moved, true, truth = transformed_sections(args.cells, args.times,
                                                  args.sections, seed, args.noise,
                                                  args.init_length_scale)
        error, flips = alignment_error(moved, true)
        align_err.append(error)
        mirror_ok.append(flips)
        for name, method in METHODS.items():
            tic = time.perf_counter()
            out = method(moved, true)
            seconds[name] += time.perf_counter() - tic
            scores[name].append(rmse(out, truth))
            if name.endswith('r/h^2'):
                info.append(out.uns['staged_trajectories']['spatial_information'])
    pattern = ('independent initial states' if args.init_length_scale is None else
               f'initial states patterned over {args.init_length_scale:g} spacings')
    print(f'{args.cells} cells, {args.times} times, {args.sections} section(s) per '
          f'time, noise {args.noise}, {pattern}, random rotation + mirroring + shift '
          f'per section, seeds {args.seeds}')
    print(f'alignment: median error {np.mean(align_err):.2f} cell spacings, '
          f'{100 * np.mean(mirror_ok):.0f}% of sections within 2 spacings; spatial '
          f'information r = {np.mean(info):.3f}\n')
    print('| method | trajectory RMSE (mean ± sd) | per seed | seconds per run |')
    print('|---|---|---|---|')
    for name in METHODS:
        values = np.asarray(scores[name])
        print(f'| {name} | {values.mean():.3f} ± {values.std():.3f} | '
              f'{", ".join(f"{v:.3f}" for v in values)} | '
              f'{seconds[name] / len(args.seeds):.1f} |')


if __name__ == '__main__':
    main()
