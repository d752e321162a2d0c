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
    """Keeps freed memory for reuse in this process (glibc only; a no-op
    elsewhere, or when ``TORCH_STAGED_MALLOC=default`` is set). On the 2-core
    CPU machine this cut the demo's system time from 36 s to 5 s. Returns
    whether the settings were applied.
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
