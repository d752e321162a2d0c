"""An agent-based tissue with a known ground truth (signed GRNs and ligand ->
receptor couplings), integrated in continuous time.
"""
import numbers
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

import anndata as ad
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from torch_staged.data._neighbors import knn_edges
from torch_staged.typing import ArrayLike

LAYOUTS = ('random', 'grid')

#: Hill coefficient of every regulatory and ligand term.
HILL_N = 2
#: Hill threshold of the ligand term of every ligand -> receptor pair.
LIGAND_K = 1.0
#: Default observation times: 17 points on [0, 8], where most genes are still moving.
DEFAULT_TIMES = np.linspace(0.0, 8.0, 17)

Knockout = Union[str, Sequence[str], Mapping[str, Optional[ArrayLike]]]


# Validation ###################################################################

def _check_int(value, name: str, minimum: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < minimum):
        raise ValueError(f"'{name}' must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _check_float(value, name: str, low: float, high: float = np.inf,
                 low_open: bool = False, high_open: bool = False) -> float:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and np.isfinite(value))
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        lo = '(' if low_open else '['
        hi = ')' if high_open else ']'
        raise ValueError(f"'{name}' must be a finite number in {lo}{low}, {high}{hi} "
                         f"(got {value!r})")
    return value


def _check_times(times) -> np.ndarray:
    arr = np.asarray(DEFAULT_TIMES if times is None else times, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"'times' must be a 1-D array of at least two time points "
                         f"(got shape {list(arr.shape)})")
    if not np.isfinite(arr).all():
        raise ValueError(f"'times' has NaN or Inf entries (got {arr.tolist()})")
    if not (np.diff(arr) > 0).all():
        raise ValueError(f"'times' must be strictly increasing (got {arr.tolist()})")
    return arr


# The ground truth #############################################################

@dataclass
class _Truth:
    """All parameters of one simulated tissue (internal)."""
    genes: List[str]
    roles: List[str]
    type_names: List[str]
    grn: pd.DataFrame  # type_code, source, target (indices), strength (signed), K
    basal: np.ndarray  # [K, G]
    decay: np.ndarray  # [K, G]
    lr_all: pd.DataFrame  # ligand, receptor (indices), true (bool), for every pair
    coupling: np.ndarray  # [P, K, K] strength W_p(sender, receiver) of the true pairs
    false_edges: pd.DataFrame  # type_code, source, target (indices)


def _gene_panel(num_genes: int, num_pairs: int, num_decoy_pairs: int,
                rng: np.random.Generator):
    """Gene names and roles. Ligands are ``L*``, receptors ``R*`` (pair i is
    ``(Li, Ri)``), the others ``G*``; which pairs are decoys is random.
    """
    num_lr = num_pairs + num_decoy_pairs
    num_other = num_genes - 2 * num_lr
    genes = ([f'L{i}' for i in range(num_lr)] + [f'R{i}' for i in range(num_lr)]
             + [f'G{i}' for i in range(num_other)])
    is_true = np.zeros(num_lr, dtype=bool)
    is_true[rng.permutation(num_lr)[:num_pairs]] = True
    roles = ([('ligand' if t else 'decoy_ligand') for t in is_true]
             + [('receptor' if t else 'decoy_receptor') for t in is_true]
             + ['other'] * num_other)
    return genes, roles, is_true


def _make_truth(num_genes: int, num_cell_types: int, num_pairs: int,
                num_decoy_pairs: int, regulators_per_gene: int,
                type_specific_fraction: float, prior_false_edges: float,
                rng: np.random.Generator) -> _Truth:
    K, G = num_cell_types, num_genes
    num_lr = num_pairs + num_decoy_pairs
    genes, roles, is_true = _gene_panel(G, num_pairs, num_decoy_pairs, rng)
    ligands = np.arange(num_lr)
    receptors = num_lr + np.arange(num_lr)
    others = np.arange(2 * num_lr, G)
    true_lig, true_rec = ligands[is_true], receptors[is_true]
    decoy_lig = ligands[~is_true]
    # Decoy ligands are sinks: regulated, but they regulate nothing.
    is_sink = np.zeros(G, dtype=bool)
    is_sink[decoy_lig] = True
    # Incoming GRN edges of true ligands and receptors are weak, so that ligands
    # stay cell-type specific and receptors follow their neighbours' ligands.
    in_scale = np.ones(G)
    in_scale[true_lig] = 0.25
    in_scale[true_rec] = 0.25

    # ---- per (type, gene) basal production and decay --------------------------
    decay = rng.uniform(0.2, 0.5, (K, G))
    basal = rng.uniform(0.02, 0.15, (K, G))
    basal[:, true_rec] = rng.uniform(0.01, 0.03, (K, true_rec.size))
    # the type with a high ligand basal: types in turn, in a random order
    sender = rng.permutation(np.resize(rng.permutation(K), num_lr))
    basal[:, ligands] = rng.uniform(0.01, 0.03, (K, num_lr))
    basal[sender, ligands] = rng.uniform(0.6, 1.0, num_lr)

    # ---- GRN: shared base edges, some slots replaced per type -----------------
    R = regulators_per_gene
    candidates = [np.flatnonzero(~is_sink & (np.arange(G) != g)) for g in range(G)]
    base_src = np.stack([rng.choice(candidates[g], R, replace=False) for g in range(G)])
    base_sign = np.where(rng.random((G, R)) < 0.6, 1.0, -1.0)
    base_mag = rng.uniform(0.3, 0.7, (G, R)) * in_scale[:, None]
    base_K = rng.uniform(0.5, 1.5, (G, R))
    src = np.repeat(base_src[None], K, 0)  # [K, G, R]
    sign = np.repeat(base_sign[None], K, 0)
    mag = base_mag[None] * rng.uniform(0.8, 1.2, (K, G, R))
    Kh = np.repeat(base_K[None], K, 0)
    replace = rng.random((K, G, R)) < type_specific_fraction
    for t, g, r in zip(*np.nonzero(replace)):  # loops over (type, gene) slots only
        free = np.setdiff1d(candidates[g], src[t, g])
        if free.size == 0:
            continue
        src[t, g, r] = rng.choice(free)
        sign[t, g, r] = 1.0 if rng.random() < 0.6 else -1.0
        mag[t, g, r] = rng.uniform(0.3, 0.7) * in_scale[g]
        Kh[t, g, r] = rng.uniform(0.5, 1.5)
    # Every true receptor activates its own downstream target, in every type.
    targets = others[:num_pairs]
    for rec, tgt in zip(true_rec, targets):
        for t in range(K):
            slot = np.flatnonzero(src[t, tgt] == rec)
            slot = slot[0] if slot.size else 0
            src[t, tgt, slot] = rec
            sign[t, tgt, slot] = 1.0
            mag[t, tgt, slot] = rng.uniform(0.6, 1.0)
            Kh[t, tgt, slot] = rng.uniform(0.5, 1.0)
    type_code = np.repeat(np.arange(K), G * R)
    target = np.tile(np.repeat(np.arange(G), R), K)
    grn = pd.DataFrame({'type_code': type_code, 'source': src.reshape(-1),
                        'target': target, 'strength': (sign * mag).reshape(-1),
                        'K': Kh.reshape(-1)})
    grn = grn.sort_values(['type_code', 'target', 'source']).reset_index(drop=True)

    # ---- ligand -> receptor couplings ----------------------------------------
    coupling = np.zeros((num_pairs, K, K))
    for p, lig in enumerate(true_lig):
        s = sender[lig]
        pool = np.delete(np.arange(K), s) if K > 1 else np.arange(K)
        size = rng.integers(1, pool.size + 1)
        receivers = rng.choice(pool, size, replace=False)
        coupling[p, s, receivers] = rng.uniform(0.5, 0.9) * rng.uniform(0.8, 1.2, size)
    lr_all = pd.DataFrame({'ligand': ligands, 'receptor': receptors, 'true': is_true})

    # ---- false prior edges: non-edges of each type ----------------------------
    rows = []
    for t in range(K):
        true_keys = set(zip(src[t].reshape(-1).tolist(), target[:G * R].tolist()))
        pool = [(s, g) for g in range(G) for s in range(G)
                if s != g and (s, g) not in true_keys]
        count = min(int(round(prior_false_edges * len(true_keys))), len(pool))
        pick = rng.choice(len(pool), count, replace=False)
        rows.extend((t, *pool[i]) for i in np.sort(pick))
    false_edges = pd.DataFrame(rows, columns=['type_code', 'source', 'target'],
                               dtype=np.int64)
    return _Truth(genes, roles, [f'T{t}' for t in range(K)], grn, basal, decay,
                  lr_all, coupling, false_edges)


# The tissue ###################################################################

def _layout(num_cells: int, layout: str, spacing: float,
            rng: np.random.Generator) -> np.ndarray:
    side = np.sqrt(num_cells) * spacing
    if layout == 'random':
        return rng.uniform(0.0, side, (num_cells, 2))
    cols = int(np.ceil(np.sqrt(num_cells)))
    i = np.arange(num_cells)
    return np.stack([i % cols, i // cols], axis=1).astype(np.float64) * spacing


def _patches(pos: np.ndarray, num_cell_types: int, num_patches: int,
             rng: np.random.Generator) -> np.ndarray:
    """Cell types as Voronoi regions of random seed points (seed s has type
    ``s % K``, so every type has at least one patch).
    """
    lo, hi = pos.min(0), pos.max(0)
    seeds = rng.uniform(lo, hi, (num_patches, 2))
    _, nearest = cKDTree(seeds).query(pos)
    return (np.asarray(nearest) % num_cell_types).astype(np.int64)


def _smooth_uniform(pos: np.ndarray, num_genes: int, length: float,
                    rng: np.random.Generator, features: int = 64) -> np.ndarray:
    """``[N, G]`` values with uniform marginals on [0, 1] that vary smoothly in
    space: the normal CDF of a unit-variance Gaussian random field per gene with
    a squared-exponential correlation of length :obj:`length` (random Fourier
    features, Rahimi and Recht 2007).
    """
    from scipy.special import ndtr
    w = rng.standard_normal((num_genes, features, pos.shape[1])) / length  # [G, M, 2]
    b = rng.uniform(0.0, 2.0 * np.pi, (num_genes, features))
    z = np.sqrt(2.0 / features) * np.cos(np.einsum('nd,gmd->ngm', pos, w) + b).sum(-1)
    return ndtr(z)


def _check_cell_type(cell_type, num_cells: int, num_cell_types: int) -> np.ndarray:
    arr = np.asarray(cell_type).reshape(-1)
    if arr.shape[0] != num_cells:
        raise ValueError(f"'cell_type' has {arr.shape[0]} entries but there are "
                         f"{num_cells} cells")
    if np.issubdtype(arr.dtype, np.integer):
        codes = arr.astype(np.int64)
    else:
        names = {f'T{t}': t for t in range(num_cell_types)}
        bad = sorted(set(arr.astype(str).tolist()) - set(names))
        if bad:
            raise ValueError(f"'cell_type' labels must be integer codes or one of "
                             f"{list(names)} (got {bad[:5]})")
        codes = np.array([names[s] for s in arr.astype(str)], dtype=np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= num_cell_types):
        raise ValueError(f"'cell_type' codes must lie in 0..{num_cell_types - 1} "
                         f"(got {int(codes.min())}..{int(codes.max())})")
    return codes


def _knockout_mask(knockout: Optional[Knockout], genes: List[str],
                   num_cells: int) -> np.ndarray:
    """``[N, G]`` boolean mask of clamped (cell, gene) entries."""
    mask = np.zeros((num_cells, len(genes)), dtype=bool)
    if knockout is None:
        return mask
    if isinstance(knockout, str):
        knockout = {knockout: None}
    elif not isinstance(knockout, Mapping):
        knockout = {g: None for g in knockout}
    index = {g: i for i, g in enumerate(genes)}
    for gene, cells in knockout.items():
        if gene not in index:
            raise ValueError(f"'knockout' names the gene {gene!r}, which is not in "
                             f"the gene panel {genes}")
        if cells is None:
            mask[:, index[gene]] = True
            continue
        cells = np.asarray(cells).reshape(-1)
        if cells.dtype == bool:
            if cells.size != num_cells:
                raise ValueError(f"The 'knockout' cell mask of gene {gene!r} has "
                                 f"{cells.size} entries but there are {num_cells} cells")
            mask[:, index[gene]] = cells
        elif np.issubdtype(cells.dtype, np.integer):
            if cells.size and (cells.min() < 0 or cells.max() >= num_cells):
                raise ValueError(f"The 'knockout' cell ids of gene {gene!r} must lie "
                                 f"in 0..{num_cells - 1}")
            mask[cells, index[gene]] = True
        else:
            raise ValueError(f"The 'knockout' cells of gene {gene!r} must be None, a "
                             f"boolean mask or integer cell ids (got dtype "
                             f"{cells.dtype})")
    return mask


class _Dynamics:
    """The vectorised right-hand side of one tissue (no loop over cells)."""

    def __init__(self, truth: _Truth, cell_type: np.ndarray, src: np.ndarray,
                 dst: np.ndarray, dist: np.ndarray, length_scale: float,
                 clamp: np.ndarray):
        N, G = cell_type.size, len(truth.genes)
        self.N, self.G = N, G
        # Intracellular edges, padded to the same count per type, gathered per cell.
        grn = truth.grn
        counts = np.bincount(grn['type_code'], minlength=len(truth.type_names))
        width = int(counts.max()) if counts.size else 0
        pad = np.zeros((len(truth.type_names), width, 4))
        pad[:, :, 3] = 1.0  # a harmless threshold on padded slots
        within = np.arange(len(grn)) - np.repeat(np.cumsum(counts) - counts, counts)
        pad[grn['type_code'].to_numpy(), within] = grn[['source', 'target', 'strength',
                                                 'K']].to_numpy()
        self.src = pad[cell_type, :, 0].astype(np.int64)  # [N, E]
        flat_dst = pad[cell_type, :, 1].astype(np.int64) + np.arange(N)[:, None] * G
        self.flat_dst = flat_dst.reshape(-1)
        strength = pad[cell_type, :, 2]
        self.weight = np.abs(strength)  # [N, E], zero on padded slots
        self.activates = strength > 0
        self.Kn = pad[cell_type, :, 3] ** HILL_N
        self.basal = truth.basal[cell_type]  # [N, G]
        self.decay = truth.decay[cell_type]
        # Ligand -> receptor terms of the true pairs over the neighbour edges.
        true_lr = truth.lr_all[truth.lr_all['true']]
        self.ligand = true_lr['ligand'].to_numpy()
        self.receptor = true_lr['receptor'].to_numpy()
        kernel = np.exp(-dist / length_scale)
        # [E_c, P]: W_p(type of sender, type of receiver) * exp(-d / lambda)
        self.edge_weight = (truth.coupling[:, cell_type[src], cell_type[dst]].T
                            * kernel[:, None])
        self.edge_src, self.edge_dst = src, dst
        self.clamp = clamp
        self.any_clamp = bool(clamp.any())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        N, G = self.N, self.G
        xp = np.maximum(x, 0.0)
        xs = np.take_along_axis(xp, self.src, axis=1) ** HILL_N  # [N, E]
        hill = np.where(self.activates, xs, self.Kn) / (self.Kn + xs)
        production = np.bincount(self.flat_dst, weights=(self.weight * hill).reshape(-1),
                                 minlength=N * G).reshape(N, G)
        production += self.basal
        if self.ligand.size:
            lig = xp[:, self.ligand] ** HILL_N
            lig = lig / (LIGAND_K ** HILL_N + lig)  # [N, P]
            message = self.edge_weight * lig[self.edge_src]  # [E_c, P]
            for p, rec in enumerate(self.receptor):  # loop over pairs only
                production[:, rec] += np.bincount(self.edge_dst, weights=message[:, p],
                                                  minlength=N)
        dx = production - self.decay * x
        if self.any_clamp:
            dx[self.clamp] = 0.0
        return dx


def _integrate(rhs: _Dynamics, x0: np.ndarray, times: np.ndarray,
               dt: float) -> np.ndarray:
    """Fixed-step RK4 from ``x0`` at ``times[0]``; the states at ``times``."""
    out = np.empty((times.size, ) + x0.shape)
    out[0] = x = x0
    for k in range(times.size - 1):
        span = times[k + 1] - times[k]
        steps = max(int(np.ceil(span / dt - 1e-9)), 1)
        h = span / steps
        for _ in range(steps):
            k1 = rhs(x)
            k2 = rhs(x + 0.5 * h * k1)
            k3 = rhs(x + 0.5 * h * k2)
            k4 = rhs(x + h * k3)
            x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        out[k + 1] = x
    return out


# The public function ##########################################################

def simulate_tissue(
    num_cells: Optional[int] = None,
    num_genes: int = 20,
    num_cell_types: int = 3,
    num_pairs: int = 4,
    num_decoy_pairs: int = 2,
    *,
    times: Optional[ArrayLike] = None,
    layout: str = 'random',
    spacing: float = 1.0,
    num_patches: Optional[int] = None,
    k: int = 8,
    length_scale: float = 1.0,
    regulators_per_gene: int = 2,
    type_specific_fraction: float = 0.3,
    prior_false_edges: float = 1.0,
    init_scale: float = 2.0,
    init_length_scale: Optional[float] = None,
    noise: float = 0.05,
    dt: float = 0.05,
    knockout: Optional[Knockout] = None,
    snapshot: bool = False,
    snapshot_fraction: float = 0.5,
    pos: Optional[ArrayLike] = None,
    cell_type: Optional[ArrayLike] = None,
    seed: Optional[int] = 0,
) -> ad.AnnData:
    r"""Simulates an agent-based tissue with a known ground truth of signed
    gene-regulatory networks and ligand -> receptor couplings.

    Cells lie on a 2-D tissue, with cell types in spatially coherent patches
    (Voronoi regions of :obj:`num_patches` random points). Each cell
    :math:`c` of type :math:`\tau = \tau(c)` carries a state
    :math:`x_{c,g} \geq 0` for the genes :math:`g` of one panel, which evolves as

    .. math::
        \frac{dx_{c,g}}{dt} = b_{\tau,g}
        + \sum_{s \to g \,\in\, \mathrm{GRN}_\tau} |w_{\tau,sg}|\,
          \phi_{\tau,sg}(x_{c,s})
        + \sum_{p:\, r_p = g} \sum_{j \in \mathcal{N}(c)}
          W_p(\tau(j), \tau)\, e^{-d_{jc} / \lambda}\,
          \frac{x_{j,\ell_p}^n}{K_L^n + x_{j,\ell_p}^n}
        - \gamma_{\tau,g}\, x_{c,g},

    with Hill activation or repression according to the sign of the strength
    :math:`w_{\tau,sg}`

    .. math::
        \phi_{\tau,sg}(x) = \begin{cases}
        x^n / (K_{\tau,sg}^n + x^n) & w_{\tau,sg} > 0 \\
        K_{\tau,sg}^n / (K_{\tau,sg}^n + x^n) & w_{\tau,sg} < 0
        \end{cases}

    (:math:`n = 2`, :math:`K_L = 1`). Production terms are non-negative, so the
    state stays non-negative. :math:`\mathcal{N}(c)` are the :obj:`k` nearest
    cells of :math:`c` at distances :math:`d_{jc}`.

    The ground truth:

    * Genes ``L0, L1, ..`` are ligands, ``R0, R1, ..`` receptors (the pair table
      lists ``(Li, Ri)``) and ``G0, G1, ..`` other genes. :obj:`num_pairs` pairs,
      drawn at random, are true: ligand :math:`\ell_p` has a high basal
      production in one sender type, and :math:`W_p(s, r) > 0` only for that
      sender type :math:`s` and one or more other receiver types :math:`r`.
      The others are decoys with :math:`W = 0`; decoy ligands have the same
      type-specific expression but regulate nothing (no outgoing edge).
    * Every gene has :obj:`regulators_per_gene` regulators per type (60%
      activating). The edges are shared by all types, except a fraction
      :obj:`type_specific_fraction` of slots redrawn per type; shared edges keep
      their sign, with strengths jittered per type. Each true receptor
      activates its own downstream target ``G<p>`` in every type. Incoming edges
      of true ligands and receptors are weak, so ligands stay type specific and
      receptors follow their neighbours' ligands.
    * The GRN prior is the true GRN plus :math:`\mathrm{round}(f\cdot|E_\tau|)`
      false edges per type (:math:`f` = :obj:`prior_false_edges`).

    The ODE is integrated from :math:`x(t_0) \sim U(0, \text{init\_scale})`
    (knocked-out entries at 0) with fixed-step RK4 (float64, step at most
    :obj:`dt`, landing exactly on every time of :obj:`times`). Observations add
    absolute Gaussian noise and clip at zero:
    :math:`X = \max(0, x + \sigma\varepsilon)`, :math:`\sigma` = :obj:`noise`.

    Args:
        num_cells (int, optional): Number of cells :math:`N`.
            (default: :obj:`300`, or ``len(pos)``)
        num_genes (int, optional): Size :math:`G` of the gene panel; at least
            :math:`2(P + D) + P` (ligands, receptors, one target per true pair).
            (default: :obj:`20`)
        num_cell_types (int, optional): Number of cell types ``'T0', 'T1', ..``.
            (default: :obj:`3`)
        num_pairs (int, optional): Number :math:`P` of true ligand -> receptor
            pairs. (default: :obj:`4`)
        num_decoy_pairs (int, optional): Number :math:`D` of decoy pairs with no
            coupling. (default: :obj:`2`)
        times (array-like, optional): Strictly increasing observation times; the
            simulation starts at ``times[0]``.
            (default: 17 points on :math:`[0, 8]`)
        layout (str, optional): ``'random'`` (uniform in a square of side
            :math:`\sqrt{N}\cdot` :obj:`spacing`) or ``'grid'`` (a square grid of
            step :obj:`spacing`). (default: :obj:`'random'`)
        spacing (float, optional): Typical distance between cells.
            (default: :obj:`1.0`)
        num_patches (int, optional): Number of Voronoi patches of cell types.
            (default: :obj:`4 * num_cell_types`)
        k (int, optional): Number of spatial neighbours (kNN) a cell receives
            ligands from. (default: :obj:`8`)
        length_scale (float, optional): Decay length :math:`\lambda` of the
            ligand signal. (default: :obj:`1.0`)
        regulators_per_gene (int, optional): Regulators of each gene per type
            (at least 1).
            (default: :obj:`2`)
        type_specific_fraction (float, optional): Fraction of GRN slots redrawn
            per cell type. (default: :obj:`0.3`)
        prior_false_edges (float, optional): False prior edges, as a fraction of
            the true edges of each type. (default: :obj:`1.0`)
        init_scale (float, optional): Initial states are uniform on
            ``[0, init_scale]``. (default: :obj:`2.0`)
        init_length_scale (float, optional): If given, the initial states are
            spatially patterned: :math:`x_{c,g}(t_0) = \text{init\_scale}\cdot
            \Phi(z_g(\mathbf{p}_c))` for a smooth Gaussian random field
            :math:`z_g` per gene (unit variance, squared-exponential correlation
            of this length, 64 random Fourier features) and the normal CDF
            :math:`\Phi`, so each marginal is still uniform on ``[0,
            init_scale]`` but neighbouring cells start alike. :obj:`None`:
            independent draws per cell. (default: :obj:`None`)
        noise (float, optional): Standard deviation :math:`\sigma` of the
            absolute Gaussian measurement noise. (default: :obj:`0.05`)
        dt (float, optional): Largest RK4 step. (default: :obj:`0.05`)
        knockout (str, list or dict, optional): Genes clamped to 0 during the
            whole simulation: a gene name, a list of names (all cells), or a dict
            ``{gene: cells}`` with ``cells`` :obj:`None` (all cells), a boolean
            mask ``[N]`` or integer cell ids. (default: :obj:`None`)
        snapshot (bool, optional): Observe a different random subset of
            ``round(snapshot_fraction * N)`` cells at each time, as spatial
            transcriptomics does. (default: :obj:`False`)
        snapshot_fraction (float, optional): Fraction of cells observed per time
            in snapshot mode. (default: :obj:`0.5`)
        pos (array-like, optional): ``[N, 2]`` positions replacing the random
            layout. (default: :obj:`None`)
        cell_type (array-like, optional): ``[N]`` type codes ``0..K-1`` or labels
            ``'T0'..`` replacing the patches. (default: :obj:`None`)
        seed (int, optional): Seed of every random draw. Layout, cell types,
            parameters, initial states, noise and snapshot subsets use separate
            streams, so that e.g. passing :obj:`pos` or :obj:`knockout` leaves the
            other draws unchanged. :obj:`None` draws a fresh seed (recorded in
            ``uns['truth']['seed']``). (default: :obj:`0`)

    Returns:
        :class:`anndata.AnnData` in long format, one row per observed
        (cell, time), rows sorted by time then cell:

        * ``X`` (float32): noisy expression; ``layers['truth']`` (float64): the
          noise-free state; ``var_names``: the genes;
        * ``obs['cell_id']`` (int, ``0..N-1``), ``obs['time']`` (float),
          ``obs['cell_type']`` (categorical ``'T0', 'T1', ..``);
          ``obsm['spatial']`` ``[n_obs, 2]``;
        * ``uns['lr_pairs']``: DataFrame (ligand, receptor) of true and decoy
          pairs; ``uns['grn_prior']``: DataFrame (source, target, cell_type).
          Both go straight into
          :func:`~torch_staged.data.build_tissue_graph`;
        * ``uns['truth']``: a dict with ``intracellular`` (DataFrame cell_type,
          source, target, sign, strength, K: the rows of the GRN prior, i.e.
          every true edge and every false prior edge, the latter with sign and
          strength 0 and K NaN), ``intercellular`` (DataFrame
          ligand, receptor, sender_type, receiver_type, strength, true_pair:
          every pair of the table for every (sender, receiver) type pair,
          strength 0 when inactive or decoy), ``genes`` (DataFrame gene, role), ``basal`` and
          ``decay`` ``[K, G]``, ``cell_id``, ``cell_pos`` ``[N, 2]``,
          ``cell_type`` ``[N]`` and ``times`` of all simulated cells,
          ``knockout_mask`` ``[N, G]``, ``hill_n``, ``ligand_K`` and the
          arguments (``seed``, ``num_cells``, ``num_genes``, ``k``,
          ``length_scale``, ``noise``, ...). In snapshot mode it also holds
          ``full_trajectories``: the noise-free states ``[T, N, G]`` of every
          cell (cells in ``cell_id`` order).

    Example:
        >>> from torch_staged.sim import simulate_tissue, graph_from_simulation
        >>> adata = simulate_tissue(seed=0)
        >>> adata.shape  # 17 times x 300 cells, 20 genes
        (5100, 20)
        >>> truth = adata.uns['truth']['intercellular']
        >>> data, X, t = graph_from_simulation(adata)  # X: [17, 300, 20]
    """
    # ---- validation -----------------------------------------------------------
    num_genes = _check_int(num_genes, 'num_genes', 1)
    num_cell_types = _check_int(num_cell_types, 'num_cell_types', 1)
    num_pairs = _check_int(num_pairs, 'num_pairs', 0)
    num_decoy_pairs = _check_int(num_decoy_pairs, 'num_decoy_pairs', 0)
    k = _check_int(k, 'k', 1)
    regulators_per_gene = _check_int(regulators_per_gene, 'regulators_per_gene', 1)
    needed = 2 * (num_pairs + num_decoy_pairs) + num_pairs
    if num_genes < max(needed, 2):
        raise ValueError(
            f"'num_genes' must be at least 2 * (num_pairs + num_decoy_pairs) + "
            f"num_pairs = {needed} (a ligand and a receptor per pair and one "
            f"downstream target per true pair; got num_genes={num_genes})")
    if regulators_per_gene > num_genes - 1 - num_decoy_pairs:
        raise ValueError(f"'regulators_per_gene' must be at most num_genes - 1 - "
                         f"num_decoy_pairs = {num_genes - 1 - num_decoy_pairs} "
                         f"(got {regulators_per_gene})")
    if layout not in LAYOUTS:
        raise ValueError(f"'layout' must be one of {LAYOUTS} (got {layout!r})")
    spacing = _check_float(spacing, 'spacing', 0.0, low_open=True, high_open=True)
    length_scale = _check_float(length_scale, 'length_scale', 0.0, low_open=True,
                                high_open=True)
    type_specific_fraction = _check_float(type_specific_fraction,
                                          'type_specific_fraction', 0.0, 1.0)
    prior_false_edges = _check_float(prior_false_edges, 'prior_false_edges', 0.0,
                                     high_open=True)
    init_scale = _check_float(init_scale, 'init_scale', 0.0, high_open=True)
    if init_length_scale is not None:
        init_length_scale = _check_float(init_length_scale, 'init_length_scale', 0.0,
                                         low_open=True, high_open=True)
    noise = _check_float(noise, 'noise', 0.0, high_open=True)
    dt = _check_float(dt, 'dt', 0.0, low_open=True, high_open=True)
    snapshot_fraction = _check_float(snapshot_fraction, 'snapshot_fraction', 0.0,
                                     1.0, low_open=True)
    times_np = _check_times(times)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    seed = _check_int(seed, 'seed', 0)

    if pos is not None:
        pos_np = np.asarray(pos, dtype=np.float64)
        if pos_np.ndim != 2 or pos_np.shape[1] != 2:
            raise ValueError(f"'pos' must have shape [num_cells, 2] (got "
                             f"{list(pos_np.shape)})")
        if not np.isfinite(pos_np).all():
            raise ValueError("'pos' has NaN or Inf entries")
        if num_cells is not None and num_cells != pos_np.shape[0]:
            raise ValueError(f"'num_cells' ({num_cells}) differs from the number of "
                             f"rows of 'pos' ({pos_np.shape[0]})")
        num_cells = pos_np.shape[0]
    num_cells = _check_int(300 if num_cells is None else num_cells, 'num_cells', 2)
    if k >= num_cells:
        raise ValueError(f"'k' must be smaller than 'num_cells' (got k={k} for "
                         f"{num_cells} cells)")
    num_patches = _check_int(4 * num_cell_types if num_patches is None else num_patches,
                             'num_patches', 1)
    if num_patches < num_cell_types and cell_type is None:
        raise ValueError(f"'num_patches' must be at least 'num_cell_types' = "
                         f"{num_cell_types} so that every type has a patch (got "
                         f"{num_patches})")
    if not isinstance(snapshot, (bool, np.bool_)):
        raise ValueError(f"'snapshot' must be True or False (got {snapshot!r})")

    # ---- random streams ------------------------------------------------------
    streams = np.random.SeedSequence(seed).spawn(6)
    rng_layout, rng_types, rng_params, rng_init, rng_noise, rng_snap = (
        np.random.default_rng(s) for s in streams)

    truth = _make_truth(num_genes, num_cell_types, num_pairs, num_decoy_pairs,
                        regulators_per_gene, type_specific_fraction,
                        prior_false_edges, rng_params)
    if pos is None:
        pos_np = _layout(num_cells, layout, spacing, rng_layout)
    if cell_type is None:
        codes = _patches(pos_np, num_cell_types, num_patches, rng_types)
    else:
        codes = _check_cell_type(cell_type, num_cells, num_cell_types)
    clamp = _knockout_mask(knockout, truth.genes, num_cells)

    # ---- simulate --------------------------------------------------------------
    src, dst, dist = knn_edges(pos_np, k)
    rhs = _Dynamics(truth, codes, src, dst, dist, length_scale, clamp)
    if init_length_scale is None:
        x0 = rng_init.uniform(0.0, init_scale, (num_cells, num_genes))
    else:
        x0 = init_scale * _smooth_uniform(pos_np, num_genes, init_length_scale, rng_init)
    x0[clamp] = 0.0
    states = _integrate(rhs, x0, times_np, dt)  # [T, N, G]
    noisy = np.maximum(states + noise * rng_noise.standard_normal(states.shape), 0.0)

    # ---- observed rows -------------------------------------------------------
    T, N = times_np.size, num_cells
    if snapshot:
        size = max(int(round(snapshot_fraction * N)), 1)
        cells = np.stack([np.sort(rng_snap.choice(N, size, replace=False))
                          for _ in range(T)])  # [T, size]
    else:
        cells = np.repeat(np.arange(N)[None], T, 0)
    time_idx = np.repeat(np.arange(T), cells.shape[1])
    cell_idx = cells.reshape(-1)
    type_names = truth.type_names
    obs = pd.DataFrame({
        'cell_id': cell_idx.astype(np.int64),
        'time': times_np[time_idx],
        'cell_type': pd.Categorical.from_codes(codes[cell_idx], categories=type_names),
    }, index=[f'c{c}_t{t}' for c, t in zip(cell_idx, time_idx)])
    adata = ad.AnnData(
        X=noisy[time_idx, cell_idx].astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=list(truth.genes)),
        obsm={'spatial': pos_np[cell_idx].copy()},
        layers={'truth': states[time_idx, cell_idx]},
    )
    adata.uns.update(_tables(truth, regulators_per_gene))
    adata.uns['truth'].update(
        genes=pd.DataFrame({'gene': truth.genes, 'role': truth.roles}),
        basal=truth.basal, decay=truth.decay,
        cell_id=np.arange(N, dtype=np.int64), cell_pos=pos_np,
        cell_type=np.asarray(type_names)[codes].astype(str), times=times_np,
        knockout_mask=clamp, hill_n=HILL_N, ligand_K=LIGAND_K,
        seed=seed, num_cells=N, num_genes=num_genes, num_cell_types=num_cell_types,
        num_pairs=num_pairs, num_decoy_pairs=num_decoy_pairs, layout=layout,
        spacing=spacing, num_patches=num_patches, k=k, length_scale=length_scale,
        regulators_per_gene=regulators_per_gene,
        type_specific_fraction=type_specific_fraction,
        prior_false_edges=prior_false_edges, init_scale=init_scale,
        init_length_scale=init_length_scale, noise=noise,
        noise_type='absolute', dt=dt, snapshot=bool(snapshot),
        snapshot_fraction=snapshot_fraction)
    if snapshot:
        adata.uns['truth']['full_trajectories'] = states
    return adata


def _tables(truth: _Truth, regulators_per_gene: int) -> Dict:
    """``uns['lr_pairs']``, ``uns['grn_prior']`` and the truth tables."""
    genes = np.asarray(truth.genes)
    types = np.asarray(truth.type_names)
    lr = truth.lr_all
    lr_pairs = pd.DataFrame({'ligand': genes[lr['ligand']],
                             'receptor': genes[lr['receptor']]})

    grn, false = truth.grn, truth.false_edges
    true_part = pd.DataFrame({
        'cell_type': types[grn['type_code']], 'source': genes[grn['source']],
        'target': genes[grn['target']], 'sign': np.sign(grn['strength']).astype(np.int64),
        'strength': grn['strength'].to_numpy(), 'K': grn['K'].to_numpy()})
    false_part = pd.DataFrame({
        'cell_type': types[false['type_code']], 'source': genes[false['source']],
        'target': genes[false['target']], 'sign': np.zeros(len(false), np.int64),
        'strength': np.zeros(len(false)), 'K': np.full(len(false), np.nan)})
    intracellular = pd.concat([true_part, false_part], ignore_index=True)
    intracellular = intracellular.sort_values(['cell_type', 'target', 'source'])
    intracellular = intracellular.reset_index(drop=True)
    grn_prior = intracellular[['source', 'target', 'cell_type']].copy()

    K = len(types)
    num_lr = len(lr)
    strength = np.zeros((num_lr, K, K))
    strength[lr['true'].to_numpy()] = truth.coupling
    sender, receiver = np.meshgrid(np.arange(K), np.arange(K), indexing='ij')
    intercellular = pd.DataFrame({
        'ligand': np.repeat(lr_pairs['ligand'].to_numpy(), K * K),
        'receptor': np.repeat(lr_pairs['receptor'].to_numpy(), K * K),
        'sender_type': np.tile(types[sender.reshape(-1)], num_lr),
        'receiver_type': np.tile(types[receiver.reshape(-1)], num_lr),
        'strength': strength.reshape(-1),
        'true_pair': np.repeat(lr['true'].to_numpy(), K * K),
    })
    return {'lr_pairs': lr_pairs, 'grn_prior': grn_prior,
            'truth': {'intracellular': intracellular, 'intercellular': intercellular}}
