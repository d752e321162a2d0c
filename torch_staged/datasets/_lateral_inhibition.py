r"""Delta-Notch lateral inhibition (Collier et al., 1996) on a hexagonal cell
lattice, with bystander genes and decoy ligand -> receptor candidates.
"""
from typing import List, Optional, Tuple

import anndata as ad
import numpy as np
import pandas as pd

from torch_staged.data._neighbors import knn_edges
from torch_staged.datasets._common import (
    PRIORS,
    check_float,
    check_int,
    check_times,
    hex_lattice,
    integrate_rk4,
    intra_truth,
    long_anndata,
    make_prior,
    observe,
    patches,
)
from torch_staged.sim._simulate import HILL_N, Knockout, _knockout_mask
from torch_staged.typing import ArrayLike

#: 21 times on [0, 40]: a fast transient, then the salt-and-pepper pattern forms.
LATERAL_TIMES = np.linspace(0.0, 40.0, 21)
#: Collier et al. (1996), Fig. 3: a, b, k, h, v.
COLLIER = dict(a=0.01, b=100.0, k=2.0, h=2.0, v=1.0)
TRUE_PAIR = ('Delta', 'Notch')
DECOY_PAIRS = [('Delta', 'DR1'), ('DL1', 'Notch'), ('DL1', 'DR1'), ('DL2', 'DR2'),
               ('DL3', 'DR3'), ('DL2', 'Notch')]


def _genes(num_bystanders: int) -> Tuple[List[str], List[str]]:
    genes = ['Delta', 'Notch', 'Hes', 'DL1', 'DL2', 'DL3', 'DR1', 'DR2', 'DR3']
    roles = ['ligand', 'receptor', 'notch_target'] + ['decoy_ligand'] * 3 + [
        'decoy_receptor'] * 3
    genes += [f'B{i}' for i in range(num_bystanders)]
    roles += ['bystander'] * num_bystanders
    return genes, roles


def _hill_grn(genes: List[str], rng: np.random.Generator) -> pd.DataFrame:
    """The Hill edges of every gene but Delta and Notch: Notch -> Hes,
    Delta -> DL1 (a decoy ligand that follows Delta inside the cell), and two
    random regulators among the decoy and bystander genes for the others.
    """
    rows = [('Notch', 'Hes', 1.0, 0.3), ('Delta', 'DL1', 0.8, 0.3)]
    pool = genes[3:]
    for target in genes[3:]:
        fixed = [r[0] for r in rows if r[1] == target]
        choices = [g for g in pool if g != target and g not in fixed]
        for source in rng.choice(choices, 2 - len(fixed), replace=False):
            sign = 1.0 if rng.random() < 0.6 else -1.0
            rows.append((str(source), target, sign * rng.uniform(0.3, 0.7),
                         rng.uniform(0.3, 0.8)))
    return pd.DataFrame(rows, columns=['source', 'target', 'strength', 'K'])


class _Dynamics:
    r"""Collier's Delta-Notch equations plus the Hill GRN of the other genes."""

    def __init__(self, genes, grn, basal, decay, src, dst, clamp, params):
        index = {g: i for i, g in enumerate(genes)}
        self.src_g = grn['source'].map(index).to_numpy()
        self.dst_g = grn['target'].map(index).to_numpy()
        self.w = grn['strength'].to_numpy()
        self.Kn = grn['K'].to_numpy() ** HILL_N
        self.basal, self.decay = basal, decay  # [N, G]
        self.src, self.dst = src, dst
        self.degree = np.maximum(np.bincount(dst, minlength=basal.shape[0]), 1)
        self.clamp, self.p = clamp, params

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p, N = self.p, x.shape[0]
        xp = np.maximum(x, 0.0)
        xs = xp[:, self.src_g] ** HILL_N  # [N, E]
        hill = np.where(self.w > 0, xs, self.Kn) / (self.Kn + xs)
        dx = self.basal - self.decay * x
        np.add.at(dx.T, self.dst_g, (np.abs(self.w) * hill).T)
        d, n = xp[:, 0], xp[:, 1]
        dbar = np.bincount(self.dst, weights=d[self.src], minlength=N) / self.degree
        f = dbar ** p['k'] / (p['a'] + dbar ** p['k'])
        g = 1.0 / (1.0 + p['b'] * n ** p['h'])
        dx[:, 0] = p['v'] * (g - x[:, 0])
        dx[:, 1] = f - x[:, 1]
        dx[self.clamp] = 0.0
        return dx


def _rates(genes, codes, num_types, rng):
    """Per (type, gene) basal and decay; DL2 / DL3 are high in one type each."""
    G = len(genes)
    basal = rng.uniform(0.02, 0.15, (num_types, G))
    decay = rng.uniform(0.3, 0.6, (num_types, G))
    for offset, gene in enumerate(('DL2', 'DL3')):
        g = genes.index(gene)
        basal[:, g] = 0.02
        basal[offset % num_types, g] = rng.uniform(0.4, 0.6)
    return basal[codes], decay[codes]


def _truth_tables(genes, grn, type_names):
    hill = grn[['source', 'target', 'strength']]
    collier = pd.DataFrame({'source': ['Notch'], 'target': ['Delta'], 'strength': [-1.0]})
    edges = pd.concat([collier, hill], ignore_index=True)
    pairs = [TRUE_PAIR] + DECOY_PAIRS
    rows = [(lig, rec, s, r, 1.0 if (lig, rec) == TRUE_PAIR else 0.0,
             (lig, rec) == TRUE_PAIR)
            for lig, rec in pairs for s in type_names for r in type_names]
    inter = pd.DataFrame(rows, columns=['ligand', 'receptor', 'sender_type',
                                        'receiver_type', 'strength', 'true_pair'])
    lr_pairs = pd.DataFrame(pairs, columns=['ligand', 'receptor'])
    return edges, inter, lr_pairs


def lateral_inhibition(
    num_cells: int = 324,
    *,
    num_cell_types: int = 2,
    num_bystanders: int = 6,
    prior: str = 'half_false',
    times: Optional[ArrayLike] = None,
    init_scale: float = 0.3,
    noise: float = 0.02,
    dt: float = 0.05,
    knockout: Optional[Knockout] = None,
    snapshot: bool = False,
    snapshot_fraction: float = 0.5,
    seed: int = 0,
) -> ad.AnnData:
    r"""Delta-Notch lateral inhibition with feedback (Collier, Monk, Maini and
    Lewis, J. Theor. Biol. 183:429-446, 1996) on a hexagonal lattice of cells,
    with bystander genes and decoy ligand -> receptor candidates.

    Each cell :math:`c` has Notch activity :math:`n_c` and Delta :math:`d_c`
    (dimensionless, the paper's Fig. 3 parameters :math:`a = 0.01, b = 100,
    k = h = 2, v = 1`):

    .. math::
        \frac{dn_c}{dt} = f(\bar d_c) - n_c, \qquad
        \frac{dd_c}{dt} = v\,\big(g(n_c) - d_c\big), \qquad
        f(x) = \frac{x^k}{a + x^k}, \quad g(x) = \frac{1}{1 + b\,x^h},

    with :math:`\bar d_c` the mean Delta of the cell's 6 nearest neighbours
    (the lattice's 6 neighbours inside, the 6 nearest cells at the border).
    Neighbouring Delta activates Notch (the true ligand -> receptor pair,
    positive) and Notch represses the cell's own Delta (negative); from
    :math:`d, n \sim U(0, \text{init\_scale})` a salt-and-pepper pattern of
    Delta-high cells forms between :math:`t \approx 15` and :math:`40`.

    The other genes follow the Hill model of
    :func:`~torch_staged.sim.simulate_tissue` (per-type basal production and
    decay, activating or repressing Hill terms, :math:`n = 2`): ``Hes`` is
    activated by Notch; decoy ligand ``DL1`` is activated by Delta inside the
    cell (so its neighbour average is correlated with the true signal);
    ``DL2`` and ``DL3`` are high in one cell type each; decoy receptors
    ``DR1..3`` and bystanders ``B0..`` have two random regulators each among
    the decoy and bystander genes. The six decoy pairs (``Delta->DR1``,
    ``DL1->Notch``, ``DL1->DR1``, ``DL2->DR2``, ``DL3->DR3``,
    ``DL2->Notch``) carry no signal.

    Ground truth: ``uns['truth']['intercellular']`` (every candidate pair x
    sender type x receiver type; strength 1 for ``Delta->Notch``, else 0) and
    ``uns['truth']['intracellular']`` (the prior's candidates, signed: Notch
    -| Delta, the Hill edges; 0 for false prior edges).

    STATS (the defaults):

    .. list-table::
        :header-rows: 1

        * - cells
          - genes
          - times
          - cell types
          - candidate pairs (true)
          - true GRN edges
        * - 324
          - 15
          - 21
          - 2
          - 7 (1)
          - 26 per type

    Args:
        num_cells (int, optional): Number of cells on the lattice (10² to 10⁴).
            (default: :obj:`324`)
        num_cell_types (int, optional): Cell types (patches); they differ in
            the bystanders' rates only. (default: :obj:`2`)
        num_bystanders (int, optional): Bystander genes ``B0..``.
            (default: :obj:`6`)
        prior (str, optional): ``'none'``, ``'true'`` or ``'half_false'``
            (true GRN edges plus as many false ones per type).
            (default: :obj:`'half_false'`)
        times (array-like, optional): Observation times.
            (default: 21 points on :math:`[0, 40]`)
        init_scale (float, optional): Initial states uniform on
            ``[0, init_scale]``. (default: :obj:`0.3`)
        noise (float, optional): Absolute Gaussian observation noise (clipped
            at 0). (default: :obj:`0.02`)
        dt (float, optional): Largest RK4 step. (default: :obj:`0.05`)
        knockout (str, list or dict, optional): Genes clamped at 0, as in
            :func:`~torch_staged.sim.simulate_tissue`. (default: :obj:`None`)
        snapshot (bool, optional): A fresh random subset of cells per time.
            (default: :obj:`False`)
        snapshot_fraction (float, optional): Fraction observed per time.
            (default: :obj:`0.5`)
        seed (int, optional): Seed of every random draw. (default: :obj:`0`)

    Returns:
        Long-format :class:`anndata.AnnData` in the layout of
        :func:`~torch_staged.sim.simulate_tissue`.

    Example:
        >>> from torch_staged.datasets import lateral_inhibition
        >>> adata = lateral_inhibition(100, seed=0)
        >>> adata.shape
        (2100, 15)
    """
    num_cells = check_int(num_cells, 'num_cells', 8)
    num_cell_types = check_int(num_cell_types, 'num_cell_types', 1)
    num_bystanders = check_int(num_bystanders, 'num_bystanders', 2)
    if prior not in PRIORS:
        raise ValueError(f"'prior' must be one of {PRIORS} (got {prior!r})")
    times_np = check_times(LATERAL_TIMES if times is None else times)
    init_scale = check_float(init_scale, 'init_scale', 0.0, high_open=True)
    noise = check_float(noise, 'noise', 0.0, high_open=True)
    dt = check_float(dt, 'dt', 0.0, low_open=True, high_open=True)
    seed = check_int(seed, 'seed', 0)

    genes, roles = _genes(num_bystanders)
    type_names = [f'T{i}' for i in range(num_cell_types)]
    rng_layout, rng_param, rng_init, rng_noise, rng_snap, rng_prior = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6))
    pos = hex_lattice(num_cells)
    codes = patches(pos, num_cell_types, 4 * num_cell_types, rng_layout)
    grn = _hill_grn(genes, rng_param)
    basal, decay = _rates(genes, codes, num_cell_types, rng_param)
    src, dst, _ = knn_edges(pos, 6)
    clamp = _knockout_mask(knockout, genes, num_cells)
    x0 = rng_init.uniform(0.0, init_scale, (num_cells, len(genes)))
    x0[clamp] = 0.0
    rhs = _Dynamics(genes, grn, basal, decay, src, dst, clamp, COLLIER)
    states = integrate_rk4(rhs, x0, times_np, dt)
    noisy, cells = observe(states, noise, rng_noise, snapshot, snapshot_fraction,
                           rng_snap)

    edges, inter, lr_pairs = _truth_tables(genes, grn, type_names)
    grn_prior = make_prior(prior, edges, genes, type_names, rng_prior)
    intra = intra_truth(grn_prior, edges)
    return long_anndata(
        states=states, noisy=noisy, cells=cells, times=times_np, pos=pos, codes=codes,
        type_names=type_names, genes=genes, lr_pairs=lr_pairs, grn_prior=grn_prior,
        intracellular=intra, intercellular=inter, roles=roles, k=6, snapshot=snapshot,
        extra=dict(dataset='lateral_inhibition', seed=seed, prior=prior,
                   noise=noise, knockout_mask=clamp, **COLLIER))
