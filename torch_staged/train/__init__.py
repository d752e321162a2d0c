r"""Training: :func:`fit`, checkpoints, data-parallel training on ``torch.distributed``."""
from torch_staged._allocator import tune_allocator
from torch_staged.train._checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from torch_staged.train._distributed import (
    DistInfo,
    cleanup,
    get_rank,
    get_world_size,
    init_from_env,
    is_main,
    shard,
)
from torch_staged.train._fit import DivergenceError, FitResult, fit

__all__ = ['fit', 'FitResult', 'DivergenceError', 'CheckpointError', 'save_checkpoint',
           'load_checkpoint', 'load_model',
           'init_from_env', 'cleanup', 'is_main', 'get_rank', 'get_world_size',
           'shard', 'DistInfo', 'tune_allocator']
