"""Allocator settings for long CPU runs (the command line and its workers)."""
import ctypes
import os
import sys

#: glibc ``mallopt`` parameters (``malloc.h``)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap and freed memory is kept, so that
#: the same large temporaries of every right-hand-side evaluation reuse pages
#: instead of mapping (and zero-filling) fresh ones (32 MiB: glibc's maximum)
_THRESHOLD = 32 * 1024 * 1024


def tune_allocator() -> bool:
    r"""Keeps freed memory for reuse in this process, for long CPU fits.

    Every right-hand-side evaluation allocates the same large temporaries.
    glibc returns blocks above its mmap threshold to the kernel when they are
    freed, so the next evaluation maps fresh pages, which the kernel zero-fills.
    This raises the threshold to 32 MiB (glibc's maximum) and the trim threshold
    to 128 MiB. On the 2-core CPU machine it cut the demo's system time from
    36 s to 5 s. The command line (``torch-staged fit``, ``demo``) calls it; call
    it once before :func:`~torch_staged.train.fit` in a Python session. It
    changes ``malloc`` for the whole process.

    Tensors above 32 MiB (large tissues) are still mapped fresh. For those,
    PyTorch's transparent huge pages help (``THP_MEM_ALLOC_ENABLE=1`` in the
    environment *before* Python starts; PyTorch reads it once): at 10^5 cells
    one layer forward + backward took 5.52 s instead of 7.96 s of CPU time
    (``benchmarks/README.md``).

    It does nothing (and returns :obj:`False`) where ``malloc`` is not glibc's,
    off Linux, or with ``TORCH_STAGED_MALLOC=default`` in the environment.

    Returns:
        bool: Whether the settings were applied.
    """
    if os.environ.get('TORCH_STAGED_MALLOC') == 'default' or not sys.platform.startswith(
            'linux'):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 4 * _THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False
