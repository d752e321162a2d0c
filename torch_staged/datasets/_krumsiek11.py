r"""The krumsiek11 myeloid differentiation network as a continuous model,
tiled over a tissue of independent cells.
"""
from importlib import resources
from typing import List, Optional

import anndata as ad
import numpy as np
import pandas as pd

from torch_staged.datasets._boolean import (
    BooleanRule,
    hill_normalised,
    input_effects,
    multilinear,
    parse_rules,
)
from torch_staged.datasets._common import (
    PRIORS,
    check_float,
    check_int,
    check_times,
    integrate_rk4,
    intra_truth,
    long_anndata,
    make_prior,
    observe,
    patches,
)
from torch_staged.sim._simulate import Knockout, _knockout_mask
from torch_staged.typing import ArrayLike

#: 15 observation times on [0, 7] (time constants 1): the cells are still
#: moving at first and close to their attractors at the end.
KRUMSIEK_TIMES = np.linspace(0.0, 7.0, 15)


def krumsiek11_rules() -> List[BooleanRule]:
    """The 11 Boolean rules of Krumsiek et al. (2011), shipped as package data."""
    text = resources.files('torch_staged.datasets').joinpath('krumsiek11.txt')
    return parse_rules(text.read_text().splitlines())


def _truth_edges(rules: List[BooleanRule], genes: List[str]) -> pd.DataFrame:
    """Signed non-self edges ``source -> target`` (self-loops are left out:
    they are not candidates of a GRN prior).
    """
    rows = [(source, rule.target, effect) for rule in rules
            for source, effect in input_effects(rule) if source != rule.target]
    frame = pd.DataFrame(rows, columns=['source', 'target', 'strength'])
    return frame[frame['strength'] != 0].reset_index(drop=True)


class _HillCube:
    r""":math:`\dot x_g = (B_g(\tilde f(x_{in})) - x_g) / \tau_{c,g}`, vectorised."""

    def __init__(self, rules, genes, tau, n, k, clamp):
        index = {g: i for i, g in enumerate(genes)}
        self.rules = [(index[r.target], [index[u] for u in r.inputs], r.table)
                      for r in rules]
        self.tau, self.n, self.k, self.clamp = tau, n, k, clamp

    def __call__(self, x: np.ndarray) -> np.ndarray:
        f = hill_normalised(x, self.n, self.k)
        target = np.empty_like(x)
        for g, inputs, table in self.rules:
            target[:, g] = multilinear(table, [f[:, u] for u in inputs])
        dx = (target - x) / self.tau
        dx[self.clamp] = 0.0
        return dx


def krumsiek11(
    num_cells: int = 200,
    *,
    num_cell_types: int = 1,
    prior: str = 'none',
    times: Optional[ArrayLike] = None,
    hill_n: float = 3.0,
    hill_k: float = 0.5,
    tau_jitter: float = 0.3,
    noise: float = 0.02,
    dt: float = 0.05,
    knockout: Optional[Knockout] = None,
    snapshot: bool = False,
    snapshot_fraction: float = 0.5,
    seed: int = 0,
) -> ad.AnnData:
    r"""The krumsiek11 myeloid progenitor network (Krumsiek et al., PLoS ONE
    6:e22649, 2011): 11 transcription factors (Gata2, Gata1, Fog1, EKLF, Fli1,
    SCL, Cebpa, Pu.1, cJun, EgrNab, Gfi1) whose Boolean rules decide between
    the erythroid/megakaryocyte and the granulocyte/monocyte fates. Every cell
    of a tissue runs the network independently (no coupling between cells).

    The Boolean rules (package data ``krumsiek11.txt``) become ODEs by the
    normalised HillCube method of Odefy (Wittmann et al., BMC Syst. Biol.
    3:98, 2009):

    .. math::
        \frac{dx_{c,g}}{dt} = \frac{B_g\big(\tilde f(x_{c,u_1}), \dots,
        \tilde f(x_{c,u_m})\big) - x_{c,g}}{\tau_{\kappa(c),g}},
        \qquad \tilde f(x) = \frac{x^n}{x^n + k^n}(1 + k^n),

    where :math:`B_g` is the multilinear interpolation of gene :math:`g`'s
    truth table over its inputs :math:`u_1..u_m` and
    :math:`\tau_{\kappa,g} = 1` (one cell type) or :math:`1 \pm`
    :obj:`tau_jitter` uniformly per (type, gene). States start uniform on
    :math:`[0, 1]^{11}` per cell; cells lie on a square of side
    :math:`\sqrt{N}` in Voronoi patches of their type.

    Ground truth (``uns['truth']['intracellular']``): one row per candidate
    (cell type, source, target) of the prior, with ``sign`` and ``strength``
    = the mean of :math:`\partial B_g / \partial y_u` over the unit cube
    (0 for a non-edge). Self-loops (Gata2, Gata1, Cebpa, Pu.1) drive the
    dynamics but are not candidates. There are no ligand -> receptor pairs.

    STATS (the defaults):

    .. list-table::
        :header-rows: 1

        * - cells
          - genes
          - times
          - true edges (signed, non-self)
          - candidates (``prior='none'``)
          - positive / negative
        * - 200
          - 11
          - 15
          - 26
          - 110 per cell type
          - 11 / 15

    Args:
        num_cells (int, optional): Number of cells (10² to 10⁴ are cheap).
            (default: :obj:`200`)
        num_cell_types (int, optional): Cell types ``T0..``: same network,
            different time constants. (default: :obj:`1`)
        prior (str, optional): The GRN prior written to ``uns['grn_prior']``:
            ``'none'`` (every ordered pair of distinct genes), ``'true'`` (the
            true edges) or ``'half_false'`` (the true edges and as many false
            ones). (default: :obj:`'none'`)
        times (array-like, optional): Observation times.
            (default: 15 points on :math:`[0, 7]`)
        hill_n (float, optional): Hill exponent :math:`n`. (default: :obj:`3`)
        hill_k (float, optional): Hill threshold :math:`k`. (default: :obj:`0.5`)
        tau_jitter (float, optional): Relative spread of the time constants
            between cell types. (default: :obj:`0.3`)
        noise (float, optional): Absolute Gaussian observation noise; values
            are clipped at 0. (default: :obj:`0.02`)
        dt (float, optional): Largest RK4 step. (default: :obj:`0.05`)
        knockout (str, list or dict, optional): Genes clamped at 0, as in
            :func:`~torch_staged.sim.simulate_tissue`. (default: :obj:`None`)
        snapshot (bool, optional): Observe a fresh random subset of cells at
            every time. (default: :obj:`False`)
        snapshot_fraction (float, optional): Fraction observed per time.
            (default: :obj:`0.5`)
        seed (int, optional): Seed of every random draw. (default: :obj:`0`)

    Returns:
        Long-format :class:`anndata.AnnData` in the layout of
        :func:`~torch_staged.sim.simulate_tissue` (``obs['cell_id', 'time',
        'cell_type']``, ``obsm['spatial']``, ``layers['truth']``,
        ``uns['lr_pairs']`` (empty), ``uns['grn_prior']``, ``uns['truth']``).

    Example:
        >>> from torch_staged.datasets import krumsiek11
        >>> adata = krumsiek11(100, seed=0)
        >>> adata.shape
        (1500, 11)
    """
    num_cells = check_int(num_cells, 'num_cells', 2)
    num_cell_types = check_int(num_cell_types, 'num_cell_types', 1)
    if prior not in PRIORS:
        raise ValueError(f"'prior' must be one of {PRIORS} (got {prior!r})")
    times_np = check_times(KRUMSIEK_TIMES if times is None else times)
    hill_n = check_float(hill_n, 'hill_n', 0.0, low_open=True, high_open=True)
    hill_k = check_float(hill_k, 'hill_k', 0.0, low_open=True, high_open=True)
    tau_jitter = check_float(tau_jitter, 'tau_jitter', 0.0, 1.0, high_open=True)
    noise = check_float(noise, 'noise', 0.0, high_open=True)
    dt = check_float(dt, 'dt', 0.0, low_open=True, high_open=True)
    seed = check_int(seed, 'seed', 0)

    rules = krumsiek11_rules()
    genes = [r.target for r in rules]
    type_names = [f'T{i}' for i in range(num_cell_types)]
    rng_layout, rng_param, rng_init, rng_noise, rng_snap, rng_prior = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6))
    pos = rng_layout.uniform(0.0, np.sqrt(num_cells), (num_cells, 2))
    codes = patches(pos, num_cell_types, 4 * num_cell_types, rng_layout)
    tau = np.ones((num_cell_types, len(genes)))
    if num_cell_types > 1:
        tau = rng_param.uniform(1 - tau_jitter, 1 + tau_jitter, tau.shape)
    clamp = _knockout_mask(knockout, genes, num_cells)
    x0 = rng_init.uniform(0.0, 1.0, (num_cells, len(genes)))
    x0[clamp] = 0.0
    rhs = _HillCube(rules, genes, tau[codes], hill_n, hill_k, clamp)
    states = integrate_rk4(rhs, x0, times_np, dt)
    noisy, cells = observe(states, noise, rng_noise, snapshot, snapshot_fraction,
                           rng_snap)

    edges = _truth_edges(rules, genes)
    grn_prior = make_prior(prior, edges, genes, type_names, rng_prior)
    intra = intra_truth(grn_prior, edges)
    inter = pd.DataFrame(columns=['ligand', 'receptor', 'sender_type', 'receiver_type',
                                  'strength', 'true_pair'])
    return long_anndata(
        states=states, noisy=noisy, cells=cells, times=times_np, pos=pos, codes=codes,
        type_names=type_names, genes=genes,
        lr_pairs=pd.DataFrame({'ligand': pd.Series(dtype=str),
                               'receptor': pd.Series(dtype=str)}),
        grn_prior=grn_prior, intracellular=intra, intercellular=inter,
        roles=['transcription_factor'] * len(genes), k=6, snapshot=snapshot,
        extra=dict(dataset='krumsiek11', seed=seed, prior=prior, hill_n=hill_n,
                   hill_k=hill_k, tau=tau, noise=noise, knockout_mask=clamp,
                   rules=[r.text for r in rules]))
