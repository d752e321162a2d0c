"""Small data generators and checks shared by the io tests."""
import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

GENES = ['L0', 'L1', 'R0', 'R1', 'G0', 'G1']
LR_PAIRS = pd.DataFrame({'ligand': ['L0', 'L1'], 'receptor': ['R0', 'R1']})


def make_long(num_cells=20, times=(0.0, 0.5, 1.0, 2.0), seed=0, sparse_x=False,
              shuffle=True, ids=None):
    """A small long-format AnnData: every cell at every time, rows shuffled."""
    rng = np.random.default_rng(seed)
    T, G = len(times), len(GENES)
    pos = rng.uniform(0, np.sqrt(num_cells), (num_cells, 2))
    types = np.array(['B', 'A', 'C'])[rng.integers(0, 3, num_cells)]
    ids = np.array([f'cell{i:02d}' for i in range(num_cells)] if ids is None else ids)
    X = rng.gamma(2.0, 1.0, (T, num_cells, G)) * (rng.uniform(size=(T, num_cells, G))
                                                  > 0.3)
    cell = np.tile(np.arange(num_cells), T)
    time = np.repeat(np.arange(T), num_cells)
    order = rng.permutation(cell.size) if shuffle else np.arange(cell.size)
    cell, time = cell[order], time[order]
    values = X[time, cell].astype(np.float32)
    adata = ad.AnnData(
        X=sparse.csr_matrix(values) if sparse_x else values,
        obs=pd.DataFrame({'cell_id': ids[cell], 'time': np.asarray(times)[time],
                          'cell_type': pd.Categorical(types[cell])},
                         index=[f'r{i}' for i in range(cell.size)]),
        var=pd.DataFrame(index=GENES),
        obsm={'spatial': pos[cell]},
        layers={'counts': np.round(values * 3)},
    )
    truth = {'X': X, 'pos': pos, 'types': types, 'ids': ids, 'times': np.asarray(times)}
    return adata, truth


def assert_adata_equal(a, b):
    """Deep equality of two AnnData objects (the user's data is never modified)."""
    assert a.shape == b.shape
    def dense(m):
        return m.toarray() if sparse.issparse(m) else np.asarray(m)

    np.testing.assert_array_equal(dense(a.X), dense(b.X))
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    for slot in ('obsm', 'obsp', 'layers', 'varm'):
        one, two = getattr(a, slot), getattr(b, slot)
        assert sorted(one.keys()) == sorted(two.keys()), slot
        for key in one.keys():
            np.testing.assert_array_equal(dense(one[key]), dense(two[key]))
    assert sorted(a.uns.keys()) == sorted(b.uns.keys())



@pytest.fixture
def long_adata():
    return make_long()


@pytest.fixture
def unchanged():
    """``with unchanged(adata): ...`` asserts that the block leaves adata as it was."""
    class _Guard:
        def __init__(self, adata):
            self.adata = adata
            self.before = copy.deepcopy(adata)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            assert_adata_equal(self.adata, self.before)
            return False

    return _Guard


@pytest.fixture(name='make_long')
def make_long_fixture():
    """The factory :func:`make_long` (test modules cannot import conftest)."""
    return make_long


@pytest.fixture(name='assert_adata_equal')
def assert_adata_equal_fixture():
    return assert_adata_equal
