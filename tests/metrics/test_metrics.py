"""Tests of :mod:`torch_staged.metrics` against hand-computed values and plain
brute-force references."""
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import rankdata as scipy_rankdata
from scipy.stats import spearmanr

from torch_staged.metrics import (
    auprc,
    auroc,
    interaction_recovery,
    mse,
    r2_score,
    rankdata,
    rollout_error,
    spearman_per_gene,
)

# --------------------------------------------------------------------------
# Forecast metrics
# --------------------------------------------------------------------------


def test_mse():
    # ((1-1)^2 + (2-4)^2) / 2 = 2
    assert mse([1.0, 2.0], [1.0, 4.0]) == 2.0
    assert mse(torch.tensor([[1.0, 2.0]]), np.array([[0.0, 0.0]])) == 2.5
    with pytest.raises(ValueError, match='same shape'):
        mse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="'pred' has NaN"):
        mse([np.nan], [1.0])


def test_r2_score_by_hand():
    # gene 0: target [0, 2] (mean 1, SST 2), pred [0, 1] (SSE 1): R2 = 0.5
    # gene 1: target [0, 10] (SST 50), predicted exactly (SSE 0): R2 = 1
    pred = [[0.0, 0.0], [1.0, 10.0]]
    target = [[0.0, 0.0], [2.0, 10.0]]
    assert r2_score(pred, target) == pytest.approx(1 - 1 / 52)  # pooled
    assert r2_score(pred, target, 'uniform_average') == pytest.approx(0.75)
    np.testing.assert_allclose(r2_score(pred, target, 'raw_values'), [0.5, 1.0])
    # a 1-D input is one gene: target [1, 2, 3] (SST 2), pred [1, 2, 4] (SSE 1)
    assert r2_score([1.0, 2.0, 4.0], [1.0, 2.0, 3.0]) == pytest.approx(0.5)
    # predicting each gene's mean gives 0
    target = np.random.default_rng(0).normal(size=(4, 5, 3))
    assert r2_score(np.broadcast_to(target.mean((0, 1)), target.shape),
                    target) == pytest.approx(0.0, abs=1e-12)


def test_r2_score_pools_cells_and_times():
    rng = np.random.default_rng(1)
    target = torch.from_numpy(rng.normal(size=(6, 10, 4)))
    pred = target + 0.3 * torch.from_numpy(rng.normal(size=(6, 10, 4)))
    # the formula of tests/train/test_fit.py: 1 - MSE / variance around gene means
    expected = 1 - float(((pred - target) ** 2).mean()) / float(
        ((target - target.mean((0, 1))) ** 2).mean())
    assert r2_score(pred, target) == pytest.approx(expected)
    per_gene = r2_score(pred, target, 'raw_values')
    flat_t, flat_p = target.reshape(-1, 4).numpy(), pred.reshape(-1, 4).numpy()
    for g in range(4):
        sse = ((flat_p[:, g] - flat_t[:, g]) ** 2).sum()
        sst = ((flat_t[:, g] - flat_t[:, g].mean()) ** 2).sum()
        assert per_gene[g] == pytest.approx(1 - sse / sst)


def test_r2_score_constant_genes():
    target = [[1.0, 0.0], [1.0, 2.0]]  # gene 0 is constant
    np.testing.assert_allclose(r2_score([[1.0, 0.0], [1.0, 2.0]], target, 'raw_values'),
                               [1.0, 1.0])
    np.testing.assert_allclose(r2_score([[2.0, 0.0], [1.0, 2.0]], target, 'raw_values'),
                               [0.0, 1.0])
    with pytest.raises(ValueError, match='every gene of .target. is constant'):
        r2_score([[1.0], [2.0]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="'multioutput' must be one of"):
        r2_score([1.0, 2.0], [1.0, 2.0], multioutput='mean')


def test_rollout_error():
    # t=0: exact; t=1: errors (2-0)^2, (2-0)^2 -> 4
    np.testing.assert_allclose(rollout_error([[0.0, 1.0], [2.0, 2.0]],
                                             [[0.0, 1.0], [0.0, 0.0]]), [0.0, 4.0])
    rng = np.random.default_rng(2)
    pred, target = rng.normal(size=(5, 7, 3)), rng.normal(size=(5, 7, 3))
    err = rollout_error(torch.from_numpy(pred), target)
    assert err.shape == (5, )
    for t in range(5):
        assert err[t] == pytest.approx(mse(pred[t], target[t]))
    assert err.mean() == pytest.approx(mse(pred, target))


def test_rankdata_ties():
    # 5 is smallest (1); the two 10s share ranks 2 and 3 (2.5); 20 is 4th
    np.testing.assert_array_equal(rankdata([10.0, 20.0, 10.0, 5.0]), [2.5, 4, 2.5, 1])
    np.testing.assert_array_equal(rankdata([3.0, 3.0, 3.0]), [2, 2, 2])
    values = np.random.default_rng(3).integers(0, 6, 50).astype(float)
    np.testing.assert_array_equal(rankdata(values), scipy_rankdata(values))


def test_spearman_per_gene():
    # target [1, 5, 4] has ranks [1, 3, 2]; centred [-1, 0, 1] and [-1, 1, 0]:
    # (1 + 0 + 0) / (sqrt(2) sqrt(2)) = 0.5
    np.testing.assert_allclose(spearman_per_gene([[1.0], [2.0], [3.0]],
                                                 [[1.0], [5.0], [4.0]]), [0.5])
    # ties: pred [1, 1, 2] has ranks [1.5, 1.5, 3]; centred [-.5, -.5, 1] and
    # [-1, 0, 1]: 1.5 / (sqrt(1.5) sqrt(2)) = sqrt(3) / 2
    np.testing.assert_allclose(spearman_per_gene([[1.0], [1.0], [2.0]],
                                                 [[1.0], [2.0], [3.0]]),
                               [np.sqrt(3) / 2])
    # [T, N, G]: averaged over cells first; a constant gene gives NaN
    rng = np.random.default_rng(4)
    pred, target = rng.normal(size=(8, 5, 3)), rng.normal(size=(8, 5, 3))
    target[:, :, 2] = 1.0
    rho = spearman_per_gene(pred, torch.from_numpy(target))
    for g in range(2):
        expected = spearmanr(pred[:, :, g].mean(1), target[:, :, g].mean(1))[0]
        assert rho[g] == pytest.approx(expected)
    assert np.isnan(rho[2])
    with pytest.raises(ValueError, match='at least two times'):
        spearman_per_gene([[1.0, 2.0]], [[1.0, 2.0]])


# --------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------

def _pairwise_auroc(scores, labels):
    """P(score of a positive > score of a negative), ties 1/2: all pairs."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_by_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats
    # both: 3 of 4 pairs
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # ties: positives 0.5, 0.9; negatives 0.2, 0.5: 1 + 0.5 + 1 + 1 = 3.5 of 4
    assert auroc([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == 0.875
    assert auroc([0.5] * 4, [0, 1, 0, 1]) == 0.5
    assert auroc([3, 2, 1], [True, False, False]) == 1.0
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0, 1, 1])) == 0.0
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.4
    assert auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels))


def _step_average_precision(scores, labels):
    """Average precision by its definition: sum over distinct thresholds."""
    total = 0.0
    previous_recall = 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [y for s, y in zip(scores, labels) if s >= threshold]
        recall = sum(chosen) / sum(labels)
        total += (recall - previous_recall) * sum(chosen) / len(chosen)
        previous_recall = recall
    return total


def test_auprc_by_hand():
    # ranked 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-):
    # recall 1/2 at precision 1, then recall 1 at precision 2/3:
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    assert auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # ties enter together: 0.9 (+) -> P=1, R=1/2; {0.5 (+), 0.5 (-)} -> P=2/3, R=1
    assert auprc([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # all tied: one threshold, precision = prevalence
    assert auprc([0.5] * 4, [0, 1, 0, 0]) == pytest.approx(0.25)
    assert auprc([3, 2, 1], [1, 1, 0]) == 1.0
    rng = np.random.default_rng(6)
    scores = rng.integers(0, 6, 50).astype(float)
    labels = (rng.random(50) < 0.3).astype(int)
    assert auprc(scores, labels) == pytest.approx(_step_average_precision(scores, labels))


@pytest.mark.parametrize('metric', [auroc, auprc])
def test_ranking_errors(metric):
    with pytest.raises(ValueError, match='both classes.*all 3 are positive'):
        metric([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match='all 2 are negative'):
        metric([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="'labels' must be binary"):
        metric([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match='same length'):
        metric([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="'scores' has NaN"):
        metric([np.nan, 0.2], [0, 1])


def test_interaction_recovery():
    truth = pd.DataFrame({
        'cell_type': ['T0', 'T0', 'T0', 'T0', 'T1'],
        'source': ['a', 'b', 'c', 'd', 'a'],
        'target': ['x', 'x', 'x', 'x', 'x'],
        'strength': [0.0, 0.0, 0.7, -1.2, 0.3],  # negative strengths are positives
    })
    learned = pd.DataFrame({
        'cell_type': ['T0', 'T0', 'T0', 'T0', 'T2'],
        'source': ['a', 'b', 'c', 'd', 'a'],
        'target': ['x', 'x', 'x', 'x', 'x'],
        'attention': [0.1, 0.4, 0.35, 0.8, 0.9],  # the T2 row has no truth
    })
    out = interaction_recovery(learned, truth, ['cell_type', 'source', 'target'],
                               'attention')
    # the T1 row has no score: left out; the rest is the hand example above
    assert out == dict(auroc=0.75, auprc=pytest.approx(5 / 6), n_pos=2, n_neg=2,
                       n_missing=1)
    # keys compared as strings, the truth column can be renamed
    coded = truth.rename(columns={'strength': 'w'}).assign(
        cell_type=[0, 0, 0, 0, 1])
    coded_learned = learned.assign(cell_type=['0', '0', '0', '0', '2'])
    assert interaction_recovery(coded_learned, coded, ['cell_type', 'source'],
                                'attention', truth_col='w')['auroc'] == 0.75
    with pytest.raises(ValueError, match='duplicated key'):
        interaction_recovery(pd.concat([learned, learned]), truth,
                             ['cell_type', 'source', 'target'], 'attention')
    with pytest.raises(ValueError, match=r"'learned' lacks the column\(s\) \['score'\]"):
        interaction_recovery(learned, truth, ['cell_type', 'source'], 'score')
    with pytest.raises(ValueError, match='both classes'):
        interaction_recovery(learned, truth[truth['strength'] == 0],
                             ['cell_type', 'source', 'target'], 'attention')


def test_interaction_recovery_on_the_simulator():
    from torch_staged.sim import simulate_tissue
    truth = simulate_tissue(40, seed=2, times=[0.0, 0.5]).uns['truth']
    intra = truth['intracellular']
    keys = ['cell_type', 'source', 'target']
    oracle = intra.assign(score=intra['strength'].abs())[keys + ['score']]
    out = interaction_recovery(oracle, intra, keys, 'score')
    assert out['auroc'] == 1.0 and out['auprc'] == 1.0
    assert out['n_pos'] == out['n_neg'] == len(intra) // 2 and out['n_missing'] == 0
    inter = truth['intercellular']
    keys = ['ligand', 'receptor', 'sender_type', 'receiver_type']
    flat = inter.assign(score=1.0)[keys + ['score']]
    out = interaction_recovery(flat, inter, keys, 'score')
    assert out['auroc'] == 0.5
    assert out['auprc'] == pytest.approx(out['n_pos'] / (out['n_pos'] + out['n_neg']))
