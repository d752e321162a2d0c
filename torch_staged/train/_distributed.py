r"""Data-parallel training on :mod:`torch.distributed`, with spatial tiles as the
unit of parallelism.

Launch one process per GPU (or per CPU worker) with ``torchrun``; every process
builds (or loads) the same model and the same list of tiles and calls
:func:`torch_staged.train.fit` with ``distributed=True``. Rank ``r`` of ``W``
holds the tiles ``tiles[r::W]``. The (tile, window) jobs are shuffled
identically on every rank and cut into optimiser steps of
``tiles_per_step * W`` jobs, exactly as one process with that
``tiles_per_step`` would; in each step a rank solves the jobs of its own tiles,
and the gradients are summed over the ranks (one ``all_reduce`` of a flat
buffer), so every rank takes the same optimiser step, the parameters stay
identical, and they equal the one-process parameters for every loss mode (up
to floating-point summation order). Rank 0 writes checkpoints and the history;
all ranks resume from the same checkpoint.

A minimal ``torchrun`` script::

    # train_dist.py -- torchrun --nproc_per_node=4 train_dist.py
    from torch_staged.data import tile
    from torch_staged.train import fit, init_from_env, cleanup

    info = init_from_env()               # nccl on GPUs, gloo on CPU
    data = ...                           # the same TissueData on every rank
    tiles = tile(data, tile_size=200.0)  # deterministic: same list everywhere
    model = ...                          # the same config on every rank
    fit(model, tiles, distributed=True, device=info.device,
        checkpoint='run/ckpt.pt', progress=info.is_main)
    cleanup()

Multi-node: run the same command on every node with
``torchrun --nnodes=NODES --nproc_per_node=GPUS --rdzv_backend=c10d
--rdzv_endpoint=HOST:PORT --rdzv_id=JOB train_dist.py``; the checkpoint path
must be on a file system that all nodes see (for ``resume``).
"""
import datetime
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, TypeVar

import torch
from torch import Tensor

T = TypeVar('T')


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the process group."""
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def available() -> bool:
    """Whether :mod:`torch.distributed` is built in."""
    return torch.distributed.is_available()


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return available() and torch.distributed.is_initialized()


def get_rank() -> int:
    """This process' rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return torch.distributed.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this process is rank 0 (always true without a process group)."""
    return get_rank() == 0


def barrier() -> None:
    """Waits for all ranks (no-op without a process group)."""
    if is_initialized() and get_world_size() > 1:
        torch.distributed.barrier()


def default_backend(device: Optional[torch.device] = None) -> str:
    """``'nccl'`` for CUDA devices, ``'gloo'`` otherwise."""
    if device is not None:
        return 'nccl' if torch.device(device).type == 'cuda' else 'gloo'
    return 'nccl' if torch.cuda.is_available() else 'gloo'


def init_from_env(backend: Optional[str] = None, device: Optional[str] = None,
                  timeout_minutes: float = 30.0) -> DistInfo:
    r"""Initialises the default process group from the environment variables
    that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``).

    Without ``torchrun`` (no ``WORLD_SIZE``) it runs as a single process of a
    world of one, without creating a process group. An already initialised
    group is reused.

    Args:
        backend (str, optional): ``'nccl'`` or ``'gloo'``; default: NCCL when
            the device is a GPU, gloo on CPU.
        device (str, optional): ``'cuda'`` or ``'cpu'``; default: ``'cuda'`` if
            available. On CUDA each process takes GPU ``LOCAL_RANK``.
        timeout_minutes (float, optional): Collective timeout.

    Returns:
        :class:`DistInfo` with the rank, world size and the device to train on.
    """
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank if device.index is None
                              else device.index)
        torch.cuda.set_device(device)
    backend = backend or default_backend(device)
    if not is_initialized():
        if int(os.environ.get('WORLD_SIZE', 1)) > 1 or 'RANK' in os.environ:
            if not available():
                raise RuntimeError('This PyTorch build has no torch.distributed')
            torch.distributed.init_process_group(
                backend=backend, init_method='env://',
                timeout=datetime.timedelta(minutes=timeout_minutes))
    else:
        backend = torch.distributed.get_backend()
    return DistInfo(get_rank(), get_world_size(), local_rank, backend, device)


def cleanup() -> None:
    """Destroys the default process group (if any)."""
    if is_initialized():
        torch.distributed.destroy_process_group()


def shard(items: Sequence[T], rank: Optional[int] = None,
          world_size: Optional[int] = None) -> List[T]:
    """``items[rank::world_size]``: this rank's share of tiles."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return list(items)[rank::world_size]


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copies the parameters and buffers of rank :obj:`src` to all ranks."""
    if get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(tensor.data, src)


def all_reduce_sum(values: Sequence[float], device=None) -> List[float]:
    """Sums a few Python floats over the ranks (identity for one process)."""
    if get_world_size() == 1:
        return [float(v) for v in values]
    buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(buf)
    return buf.tolist()


def all_reduce_gradients(params: Sequence[Tensor]) -> None:
    r"""Sums the gradients of :obj:`params` over the ranks, in place, with one
    ``all_reduce`` of a flat buffer.

    A rank that did not touch a parameter (no tile this step, or a parameter
    its graphs never use) contributes zeros; a parameter that no rank touched
    keeps ``grad = None``, so that the optimiser skips it exactly as a single
    process would.
    """
    if get_world_size() == 1 or not params:
        return
    ref = params[0]
    present = torch.tensor([p.grad is not None for p in params], dtype=ref.dtype,
                           device=ref.device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                      .reshape(-1).to(ref.dtype) for p in params] + [present])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    for p, any_rank in zip(params, flat[offset:].tolist()):
        if any_rank == 0:
            p.grad = None
