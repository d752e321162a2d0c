"""Atomic file writes that a Ctrl-C or SIGTERM cannot cut in half."""
import contextlib
import json
import os
import signal
import tempfile
import threading
from typing import Any, Callable, Dict, Iterator, Union

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def in_main_thread() -> bool:
    """Whether this is the main thread (signal handlers can be set only there)."""
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Holds SIGINT and SIGTERM back for the duration of the block and delivers
    them, to the handlers that were installed before, when it ends.

    A signal that arrives while :func:`torch.save` writes its zip archive turns
    into a :class:`RuntimeError` of the archive writer (which hides the
    :class:`KeyboardInterrupt`); deferring it lets the write finish and the run
    stop cleanly right after. Outside the main thread (where handlers cannot be
    set) the block runs unchanged.
    """
    if not in_main_thread():
        yield
        return
    received = []
    previous = {}
    for sig in _SIGNALS:
        previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:  # the first one; a repeat of it would say nothing more
            _deliver(previous[received[0]], received[0])


def _deliver(handler: Union[Callable, int, None], signum: int) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)


def write_atomic(path: Union[str, os.PathLike], write: Callable[[Any], None],
                 mode: str = 'w', prefix: str = '.tmp-') -> None:
    """Calls ``write(f)`` on a temporary file in :obj:`path`'s folder, syncs it and
    renames it onto :obj:`path` (:func:`os.replace`), with SIGINT / SIGTERM
    deferred: a crash or an interrupt never leaves a half-written file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with deferred_interrupts():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix='.tmp')
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def write_json_atomic(path: Union[str, os.PathLike], payload: Dict[str, Any]) -> None:
    """Writes :obj:`payload` as indented JSON with :func:`write_atomic`."""
    write_atomic(path, lambda f: json.dump(payload, f, indent=1), prefix='.json-')
