"""Data-parallel ``fit`` on 2 gloo processes matches one process on the same tiles
(``tiles_per_step = W * k`` in one process for ``k`` per rank), for every loss mode.
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from torch_staged.data import tile
from torch_staged.models import STAGED
from torch_staged.testing import random_tissue
from torch_staged.train import _distributed as dist
from torch_staged.train import fit, init_from_env, shard

WORLD = 2
#: (loss mode, tiles_per_step k per rank): 3 tiles, more jobs than ranks in all
MODES = [('one_step', 1), ('window', 1), ('rollout', 1), ('one_step', 2)]
# A constant rate, so that a shorter run is the start of a longer one (the
# default cosine schedule depends on the total; tests/train/test_fit.py resumes it)
FIT = dict(loss='rollout', holdout='time', holdout_size=1, lr=0.05, clip_grad=1.0,
           progress=False, restore_best=False, seed=5, scheduler=None)


def _tiles(count=2):
    torch.manual_seed(0)
    data = random_tissue(24, 3, seed=0)
    teacher = STAGED(3, 3, hidden_channels=4, mlp_channels=8)
    t = torch.linspace(0, 1, 5)
    with torch.no_grad():
        X = teacher(data, t)
    data = data.clone().set_trajectories(X, t, cell_order='graph')
    tiles = tile(data, tile_size=2.0)
    assert len(tiles) >= count
    return tiles[:count]


def _student():
    torch.manual_seed(1)
    return STAGED(3, 3, hidden_channels=4, mlp_channels=8, method='rk4',
                  options={'step_size': 0.1})


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_from_env(device='cpu')
    assert info.backend == 'gloo' and info.world_size == WORLD and info.rank == rank
    try:
        tiles = _tiles()
        # (a) 3 epochs straight
        model = _student()
        if rank == 1:  # a different start on rank 1 is overwritten by rank 0's
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        res = fit(model, tiles, epochs=3, distributed=True, **FIT)
        # (b) 2 epochs with a checkpoint (rank 0 writes), then resume to 3
        ckpt = os.path.join(out, 'ckpt.pt')
        first = _student()
        fit(first, tiles, epochs=2, distributed=True, checkpoint=ckpt, **FIT)
        resumed = _student()
        res_b = fit(resumed, tiles, epochs=3, distributed=True, resume=ckpt, **FIT)
        # (c) every loss mode, 3 tiles (uneven shares, more jobs than ranks)
        modes = {}
        for loss, k in MODES:
            student = _student()
            res_c = fit(student, _tiles(3), epochs=2, distributed=True,
                        tiles_per_step=k, **dict(FIT, loss=loss, window=2))
            gathered = [torch.zeros_like(_flat(student)) for _ in range(WORLD)]
            torch.distributed.all_gather(gathered, _flat(student))
            modes[f'{loss}/{k}'] = dict(params=gathered, history=res_c.history)
        if rank == 0:
            torch.save(dict(straight=_flat(model), resumed=_flat(resumed),
                            history=res.history, history_b=res_b.history,
                            modes=modes), os.path.join(out, 'result.pt'))
    finally:
        dist.cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason='no torch.distributed')
def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / 'result.pt', weights_only=True)

    # one process, same tiles, the gradients of both tiles in each step
    single = _student()
    ref = fit(single, _tiles(), epochs=3, tiles_per_step=WORLD, **FIT)
    torch.testing.assert_close(got['straight'], _flat(single), rtol=1e-6, atol=1e-6)
    assert not torch.equal(_flat(single), _flat(_student()))  # it did train
    for a, b in zip(got['history'], ref.history):
        assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-6)
        assert a['val_loss'] == pytest.approx(b['val_loss'], rel=1e-6, nan_ok=True)
        assert a['nfe'] == b['nfe']
    # resumed from rank 0's checkpoint == uninterrupted
    torch.testing.assert_close(got['resumed'], got['straight'], rtol=0, atol=0)
    assert len(got['history_b']) == 3
    # every loss mode: W ranks with k jobs each per step == one process with W * k
    for loss, k in MODES:
        mode = got['modes'][f'{loss}/{k}']
        params = mode['params']
        torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)  # in sync
        single = _student()
        ref = fit(single, _tiles(3), epochs=2, tiles_per_step=WORLD * k,
                  **dict(FIT, loss=loss, window=2))
        assert not torch.equal(_flat(single), _flat(_student()))
        torch.testing.assert_close(params[0], _flat(single), rtol=1e-5, atol=1e-6,
                                   msg=f'{loss}, k={k}')
        for a, b in zip(mode['history'], ref.history):
            assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5), loss
            assert a['val_loss'] == pytest.approx(b['val_loss'], rel=1e-5, nan_ok=True), loss
            assert a['nfe'] == b['nfe'], loss


def test_single_process_defaults():
    assert dist.get_world_size() == 1 and dist.get_rank() == 0 and dist.is_main()
    assert shard(list(range(5)), 1, 2) == [1, 3]
    info = init_from_env(device='cpu')  # no torchrun: a world of one
    assert (info.rank, info.world_size, info.backend) == (0, 1, 'gloo')
    a, b = _student(), _student()
    fit(a, _tiles(), epochs=1, **FIT)
    fit(b, _tiles(), epochs=1, distributed=True, **FIT)  # no group: one process
    assert torch.equal(_flat(a), _flat(b))
