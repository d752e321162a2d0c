r"""Alignment of tissue sections into one coordinate frame.

Consecutive time points of a spatial time course are different sections, each
in its own frame (shifted, rotated, sometimes mirrored). A section :math:`B` is
aligned onto a reference point set :math:`R` (the sections already aligned) in
two steps, both on random subsamples of at most ``num_samples`` cells, so that
memory stays bounded whatever the sections' sizes:

1. **Fused Gromov–Wasserstein** (POT's ``ot.gromov.fused_gromov_wasserstein``):
   a coupling :math:`\pi` that matches cells of similar expression and type
   (feature cost :math:`M`) *and* preserves the distances within each section
   (structure matrices :math:`C_B, C_R`). It does not depend on the sections'
   frames, so it works for any rotation, shift or mirroring:

   .. math::
       \min_\pi\ (1 - \beta) \sum_{ij} M_{ij}\pi_{ij}
       + \beta \sum_{ijkl} (C_{B,ik} - C_{R,jl})^2 \pi_{ij}\pi_{kl}.

   It is run from several starts (the principal axes of one set mapped onto
   those of the other with every sign flip: :math:`2^D` rotations and
   mirrorings).
2. **Procrustes with refinement**: the weighted orthogonal Procrustes transform
   of each coupling (Kabsch, reflections allowed; or an affine map), then a
   few rounds of optimal transport on the fused cost
   :math:`M_{ij} + w \lVert T(b_i) - r_j\rVert^2 / h^2` (:math:`h^2`: the mean
   squared nearest-neighbour distance of the reference, :math:`w` =
   :data:`SPATIAL_WEIGHT`) and Procrustes again,
   from the FGW coupling and from the start itself, and (2-D) from a grid of
   24 rotations and mirrorings. The transform with the lowest final fused cost
   wins.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree

TRANSFORMS = ('rigid', 'affine')
#: Feature cost between cells of different types (expression costs ~1 between
#: unrelated cells).
TYPE_PENALTY = 3.0
#: Weight :math:`w` of the squared aligned distance (in units of :math:`h^2`)
#: in the refinement cost. Chosen on seeds 10-12 of ``benchmarks/alignment.py``
#: (median section error 3.4 cell spacings with 1, 1.4-1.5 with 0.05-0.5, on
#: independent and on patterned initial states): a heavier spatial term lets
#: the one-to-one transport between two different samples of cells lock onto
#: a wrong rotation or mirroring.
SPATIAL_WEIGHT = 0.25


def _subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(rng.choice(n, size, replace=False))


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :]
                      - 2.0 * a @ b.T, 0.0)


def feature_cost(feat_a: np.ndarray, feat_b: np.ndarray, scale: float,
                 type_a: Optional[np.ndarray], type_b: Optional[np.ndarray],
                 type_penalty: float = TYPE_PENALTY) -> np.ndarray:
    r"""``[n_a, n_b]`` expression cost :math:`\lVert z_a - z_b\rVert^2 / s`
    plus :obj:`type_penalty` between cells of different types.
    """
    cost = _sq_dist(feat_a, feat_b) / scale
    if type_a is not None and type_b is not None:
        cost = cost + type_penalty * (type_a[:, None] != type_b[None, :])
    return cost


def procrustes(src: np.ndarray, dst: np.ndarray, plan: np.ndarray,
               transform: str = 'rigid') -> Tuple[np.ndarray, np.ndarray]:
    r"""The map :math:`x \mapsto A x + c` minimising
    :math:`\sum_{ij} \pi_{ij} \lVert A s_i + c - d_j \rVert^2`.

    Args:
        src (np.ndarray): ``[n, D]`` points to move.
        dst (np.ndarray): ``[m, D]`` target points.
        plan (np.ndarray): ``[n, m]`` non-negative coupling.
        transform (str): ``'rigid'`` (orthogonal :math:`A`, reflections
            allowed: weighted Kabsch) or ``'affine'`` (any :math:`A`).

    Returns:
        ``(A [D, D], c [D])``.
    """
    mass = plan.sum()
    w_src, w_dst = plan.sum(1) / mass, plan.sum(0) / mass
    mu_s, mu_d = w_src @ src, w_dst @ dst
    s, d = src - mu_s, dst - mu_d
    cross = s.T @ (plan / mass) @ d  # [D, D]
    if transform == 'rigid':
        u, _, vt = np.linalg.svd(cross)
        A = vt.T @ u.T
    else:
        gram = (s * w_src[:, None]).T @ s
        A = np.linalg.solve(gram + 1e-12 * np.eye(gram.shape[0]), cross).T
    return A, mu_d - A @ mu_s


def _dihedral_starts(src: np.ndarray, dst: np.ndarray) -> List[Tuple[np.ndarray,
                                                                     np.ndarray]]:
    """Candidate maps: principal axes of ``src`` onto those of ``dst`` with every
    sign flip (rotations by 180 degrees and mirrorings), centroid on centroid.
    """
    def axes(x):
        centred = x - x.mean(0)
        _, vecs = np.linalg.eigh(centred.T @ centred)
        return vecs[:, ::-1]

    a_s, a_d = axes(src), axes(dst)
    dim = src.shape[1]
    starts = []
    for signs in np.array(np.meshgrid(*[[1.0, -1.0]] * dim)).T.reshape(-1, dim):
        A = a_d @ np.diag(signs) @ a_s.T
        starts.append((A, dst.mean(0) - A @ src.mean(0)))
    return starts


def _grid_starts(src: np.ndarray, dst: np.ndarray, num_angles: int = 12
                 ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """2-D: rotations by every ``360 / num_angles`` degrees, with and without
    mirroring, centroid on centroid.
    """
    if src.shape[1] != 2:
        return []
    starts = []
    for angle in np.arange(num_angles) * 2.0 * np.pi / num_angles:
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        for A in (rot, rot @ np.diag([1.0, -1.0])):
            starts.append((A, dst.mean(0) - A @ src.mean(0)))
    return starts


def _emd(cost: np.ndarray) -> np.ndarray:
    import ot
    a = np.full(cost.shape[0], 1.0 / cost.shape[0])
    b = np.full(cost.shape[1], 1.0 / cost.shape[1])
    return ot.emd(a, b, cost, numItermax=max(100000, 50 * cost.size))


def align_pair(src_pos: np.ndarray, src_cost_feat: Tuple, dst_pos: np.ndarray,
               dst_cost_feat: Tuple, *, scale: float, transform: str = 'rigid',
               structure_weight: float = 0.5, num_samples: int = 300,
               refine: int = 5, rng: np.random.Generator) -> Dict:
    r"""Aligns one point set onto another (see the module docstring).

    Args:
        src_pos (np.ndarray): ``[n, D]`` positions of the section to move.
        src_cost_feat (tuple): ``(features [n, F], types [n] or None)``.
        dst_pos (np.ndarray): ``[m, D]`` reference positions.
        dst_cost_feat (tuple): ``(features [m, F], types [m] or None)``.
        scale (float): Expression cost scale :math:`s`.
        transform (str): ``'rigid'`` or ``'affine'``.
        structure_weight (float): :math:`\beta` of the fused GW objective.
        num_samples (int): Cells per set in the couplings.
        refine (int): Rounds of transport + Procrustes after FGW.
        rng (np.random.Generator): Subsampling.

    Returns:
        A dict with ``A`` ``[D, D]``, ``c`` ``[D]``, ``fgw`` (the best FGW
        objective) and ``cost`` (the final mean fused transport cost).
    """
    import ot
    i = _subsample(src_pos.shape[0], num_samples, rng)
    j = _subsample(dst_pos.shape[0], num_samples, rng)
    s_pos, d_pos = src_pos[i], dst_pos[j]
    M = feature_cost(src_cost_feat[0][i], dst_cost_feat[0][j], scale,
                     None if src_cost_feat[1] is None else src_cost_feat[1][i],
                     None if dst_cost_feat[1] is None else dst_cost_feat[1][j])
    C_s = np.sqrt(_sq_dist(s_pos, s_pos))
    C_d = np.sqrt(_sq_dist(d_pos, d_pos))
    norm = C_d.max() if C_d.max() > 0 else 1.0
    C_s, C_d = C_s / norm, C_d / norm
    p = np.full(i.size, 1.0 / i.size)
    q = np.full(j.size, 1.0 / j.size)
    nn = cKDTree(d_pos).query(d_pos, k=2)[0][:, 1] if j.size > 1 else np.ones(1)
    h2 = float((nn ** 2).mean()) or 1.0

    def refined(A, c):
        cost = np.inf
        for _ in range(refine):
            fused = M + SPATIAL_WEIGHT * _sq_dist(s_pos @ A.T + c, d_pos) / h2
            plan = _emd(fused)
            cost = float((plan * fused).sum())
            A, c = procrustes(s_pos, d_pos, plan, transform)
        return A, c, cost

    best = None
    for A0, c0 in _dihedral_starts(s_pos, d_pos):  # 2^D starts
        G0 = _emd(_sq_dist(s_pos @ A0.T + c0, d_pos))
        plan, log = ot.gromov.fused_gromov_wasserstein(
            M, C_s, C_d, p, q, loss_fun='square_loss', alpha=structure_weight,
            G0=G0, log=True, max_iter=200)
        # refine from the FGW coupling and from the start itself; the lowest
        # fused transport cost after refinement wins
        for start in (procrustes(s_pos, d_pos, plan, transform), (A0, c0)):
            A, c, cost = refined(*start)
            if best is None or cost < best['cost']:
                best = dict(A=A, c=c, cost=cost, fgw=float(log['fgw_dist']))
    for start in _grid_starts(s_pos, d_pos):  # a local search from a grid
        A, c, cost = refined(*start)
        if cost < best['cost']:
            best = dict(A=A, c=c, cost=cost, fgw=best['fgw'])
    return best


def align_all(pos: np.ndarray, feat: np.ndarray, types: Optional[np.ndarray],
              section: np.ndarray, section_time: np.ndarray, names: List[str], *,
              scale: float, transform: str = 'rigid', structure_weight: float = 0.5,
              num_samples: int = 300, refine: int = 5, seed: int = 0
              ) -> Tuple[np.ndarray, List[Dict]]:
    r"""Aligns every section into the frame of the first section of the first
    time, chaining through time: the other sections of time :math:`t_0` are
    aligned onto it, and every section of :math:`t_k` onto the pooled, aligned
    sections of :math:`t_{k-1}` (consecutive times look most alike).

    Args:
        pos (np.ndarray): ``[n, D]`` positions, each row in its section's frame.
        feat (np.ndarray): ``[n, F]`` expression features.
        types (np.ndarray, optional): ``[n]`` cell-type labels.
        section (np.ndarray): ``[n]`` section codes ``0..B-1``.
        section_time (np.ndarray): ``[B]`` time index of every section.
        names (list): ``[B]`` section labels (for the records).
        scale (float): Expression cost scale.
        transform (str): ``'rigid'`` or ``'affine'`` (see :func:`align_pair`).
        structure_weight (float): FGW structure weight.
        num_samples (int): Cells per set in the couplings.
        refine (int): Rounds of transport + Procrustes.
        seed (int): Seed of the subsamples.

    Returns:
        ``(aligned [n, D], records)``, one record per section with its label,
        time index, reference, ``A``, ``c`` and costs.
    """
    rng = np.random.default_rng(seed)
    aligned = np.empty_like(pos)
    records: List[Dict] = []
    order = np.lexsort((np.arange(section_time.size), section_time))
    rows_of = [np.flatnonzero(section == b) for b in range(section_time.size)]
    done: Dict[int, List[int]] = {}
    dim = pos.shape[1]

    def cost_feat(rows):
        return feat[rows], None if types is None else types[rows]

    for b in order:
        k = int(section_time[b])
        rows = rows_of[b]
        if not records:  # the reference frame
            A, c, ref, info = np.eye(dim), np.zeros(dim), '', {}
        else:
            ref_sections = done[k - 1] if k - 1 in done else done[k]
            ref_rows = np.concatenate([rows_of[r] for r in ref_sections])
            info = align_pair(pos[rows], cost_feat(rows), aligned[ref_rows],
                              cost_feat(ref_rows), scale=scale, transform=transform,
                              structure_weight=structure_weight,
                              num_samples=num_samples, refine=refine, rng=rng)
            A, c = info['A'], info['c']
            ref = ','.join(names[r] for r in ref_sections)
        aligned[rows] = pos[rows] @ A.T + c
        done.setdefault(k, []).append(int(b))
        records.append(dict(section=names[b], time_index=k, reference=ref,
                            A=A, c=c, fgw=info.get('fgw', 0.0),
                            cost=info.get('cost', 0.0),
                            mirrored=bool(np.linalg.det(A) < 0)))
    return aligned, records
