import math

import pytest

pytest.importorskip('matplotlib')

from torch_staged.plot import loss_curves  # noqa: E402


def _history(val_every):
    return [dict(epoch=e, train_loss=1.0 / (e + 1),
                 val_loss=2.0 / (e + 1) if val_every and (e + 1) % val_every == 0
                 else math.nan) for e in range(20)]


def test_loss_curves_with_and_without_a_held_out_split(tmp_path):
    fig = loss_curves({'a': _history(5), 'b': _history(None)}, tmp_path / 'both.png')
    assert [ax.get_title() for ax in fig.axes] == ['training loss', 'held-out loss']
    assert len(fig.axes[1].lines[0].get_xdata()) == 4  # the scored epochs only
    # fit(holdout=None), the default: no held-out loss anywhere, one panel
    fig = loss_curves({'a': _history(None)}, tmp_path / 'train.png')
    assert [ax.get_title() for ax in fig.axes] == ['training loss']
    assert (tmp_path / 'train.png').stat().st_size > 0
