"""Allocator settings for long CPU runs (the command line and its workers)."""
import ctypes
import os
import sys

#: glibc ``mallopt`` parameters (``malloc.h``)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: blocks up to this size come from the heap and freed memory is kept, so that
#: the same large temporaries of every right-hand-side evaluation reuse pages
#: instead of mapping (and zero-filling) fresh ones (32 MiB: glibc's maximum)
_THRESHOLD = 32 * 1024 * 1024
#: with ``large=True``: free memory at the top of the heap kept up to this size
#: (``mallopt`` takes an ``int``)
_KEEP = 2 ** 31 - 1


def tune_allocator(large: bool = False) -> bool:
    r"""Keeps freed memory for reuse in this process, for long CPU fits.

    Every right-hand-side evaluation allocates the same large temporaries.
    glibc returns blocks above its mmap threshold to the kernel when they are
    freed, so the next evaluation maps fresh pages, which the kernel zero-fills.
    This raises the threshold to 32 MiB (glibc's maximum) and the trim threshold
    to 128 MiB. On the 2-core CPU machine it cut the demo's system time from
    36 s to 5 s. The command line (``torch-staged fit``, ``demo``) calls it; call
    it once before :func:`~torch_staged.train.fit` in a Python session. It
    changes ``malloc`` for the whole process.

    Tensors above 32 MiB (large tissues) are still mapped fresh, unless
    :obj:`large` is set: then blocks of every size come from the heap
    (``mmap`` off) and up to 2 GiB of free memory is kept at its top. The
    process then holds its peak memory until it exits, plus what the heap
    fragments (at 10^5 cells, one layer forward + backward peaked at 2.4-3.5 GB
    instead of 2.1-2.6 GB), and no longer maps (and zero-fills) fresh pages for
    every large temporary: that pass took 2.76 s of CPU time instead of
    4.3-8.6 s on the 2-core machine. PyTorch's transparent huge pages (``THP_MEM_ALLOC_ENABLE=1`` in
    the environment *before* Python starts; PyTorch reads it once) cut the cost
    of those pages instead (``benchmarks/README.md`` compares the three).

    It does nothing (and returns :obj:`False`) where ``malloc`` is not glibc's,
    off Linux, or with ``TORCH_STAGED_MALLOC=default`` in the environment.

    Args:
        large (bool, optional): Also keep blocks above 32 MiB, for tissues of
            :math:`10^5` cells and more. (default: :obj:`False`)

    Returns:
        bool: Whether the settings were applied.
    """
    if os.environ.get('TORCH_STAGED_MALLOC') == 'default' or not sys.platform.startswith(
            'linux'):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        if large:
            return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP))
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 4 * _THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False
