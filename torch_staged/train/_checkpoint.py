"""Atomic, code-free checkpoints (loadable with ``torch.load(weights_only=True)``)."""
import json
import os
import pickle
from typing import Any, Dict, Tuple, Union

import torch

from torch_staged._atomic import write_atomic

FORMAT = 'torch_staged.checkpoint/1'


def _check_json(value: Any, what: str):
    try:
        json.dumps(value)
    except TypeError as err:
        raise TypeError(f"The checkpoint's {what} must be JSON-able: {err}") from None


def save_checkpoint(path: Union[str, os.PathLike], state: Dict[str, Any]) -> None:
    """Writes :obj:`state` to :obj:`path` atomically (a temporary file in the same
    folder, then :func:`os.replace`, with Ctrl-C / SIGTERM held back until the
    file is complete), so neither a crash nor an interrupt leaves a half-written
    checkpoint. Only tensors and plain Python values are stored.
    """
    _check_json(state.get('config', {}), 'config')
    _check_json(state.get('fit_config', {}), 'fit_config')
    write_atomic(path, lambda f: torch.save(dict(state, format=FORMAT), f),
                 mode='wb', prefix='.ckpt-')


class CheckpointError(ValueError):
    """A file that is not a readable torch_staged checkpoint (one line, names it)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _torch_load(path: str, map_location) -> Any:
    """``torch.load(weights_only=True)`` with every failure as one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if 'weights_only' in str(err) or 'Unsupported global' in str(err):
            raise CheckpointError(
                f"'{path}' holds Python objects other than tensors and plain values; "
                "it was refused without running them (a torch_staged checkpoint "
                "never holds code): use a checkpoint written by torch_staged"
            ) from None
        raise CheckpointError(f"'{path}' is not a torch_staged checkpoint "
                              f"(unreadable: {_first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, IndexError, MemoryError) as err:
        raise CheckpointError(f"'{path}' is truncated or corrupt, not a readable "
                              f"torch_staged checkpoint ({_first_line(err)})") from None


def load_checkpoint(path: Union[str, os.PathLike], map_location=None) -> Dict[str, Any]:
    """Reads a checkpoint with ``weights_only=True``: a checkpoint can hold only
    tensors and plain values, never code, so an untrusted file cannot run code.

    Raises:
        FileNotFoundError: No file at :obj:`path`.
        CheckpointError: (a :class:`ValueError`) the file is empty, truncated,
            not a checkpoint, holds code, or lacks a checkpoint's entries; the
            message is one line that names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at '{path}'")
    if os.path.isdir(path):
        raise CheckpointError(f"'{path}' is a directory, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"'{path}' is empty, not a checkpoint (an interrupted "
                              "copy?)")
    with open(path, 'rb') as f:
        head = f.read(4)
    if not (head.startswith(b'PK') or head.startswith(b'\x80')):  # zip or pickle
        raise CheckpointError(f"'{path}' is not a torch_staged checkpoint (not a "
                              "file written by torch.save)")
    state = _torch_load(path, map_location)
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        raise CheckpointError(f"'{path}' is not a torch_staged checkpoint "
                              f"(expected format '{FORMAT}')")
    missing = [k for k in ('config', 'model') if k not in state]
    if missing:
        raise CheckpointError(f"'{path}' is an incomplete torch_staged checkpoint "
                              f"(no {', '.join(missing)})")
    return state


def load_model(path: Union[str, os.PathLike], map_location=None,
               which: str = 'auto') -> Tuple[Any, Dict]:
    """Rebuilds the :class:`~torch_staged.models.STAGED` model of a checkpoint and
    returns ``(model, checkpoint)``.

    Args:
        path (path): The checkpoint.
        map_location (optional): As in :func:`torch.load`.
        which (str, optional): ``'auto'``: the parameters :func:`fit` left in
            the model (the best epoch's with ``restore_best=True``, the last
            epoch's with :obj:`False`); ``'best'`` or ``'last'`` to choose.
            (default: :obj:`'auto'`)
    """
    from torch_staged.models import STAGED
    if which not in ('auto', 'best', 'last'):
        raise ValueError(f"'which' must be 'auto', 'best' or 'last' (got {which!r})")
    state = load_checkpoint(path, map_location)
    best = (state.get('best') or {}).get('state')
    if which == 'auto':
        restore = (state.get('fit_config') or {}).get('restore_best', True)
        which = 'best' if restore else 'last'
    params = best if which == 'best' and best is not None else state['model']
    try:
        model = STAGED.from_config(state['config'])
        model.load_state_dict(params)
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"'{os.fspath(path)}': the stored parameters do not fit "
                              f"its model config ({_first_line(err)})") from None
    return model, state
