"""Atomic, code-free checkpoints (loadable with ``torch.load(weights_only=True)``)."""
import json
import os
import tempfile
from typing import Any, Dict, Tuple, Union

import torch

FORMAT = 'torch_staged.checkpoint/1'


def _check_json(value: Any, what: str):
    try:
        json.dumps(value)
    except TypeError as err:
        raise TypeError(f"The checkpoint's {what} must be JSON-able: {err}") from None


def save_checkpoint(path: Union[str, os.PathLike], state: Dict[str, Any]) -> None:
    """Writes :obj:`state` to :obj:`path` atomically (a temporary file in the same
    folder, then :func:`os.replace`), so a crash never leaves a half-written
    checkpoint. Only tensors and plain Python values are stored.
    """
    _check_json(state.get('config', {}), 'config')
    _check_json(state.get('fit_config', {}), 'fit_config')
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.ckpt-', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(dict(state, format=FORMAT), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: Union[str, os.PathLike], map_location=None) -> Dict[str, Any]:
    """Reads a checkpoint with ``weights_only=True``: a checkpoint can hold only
    tensors and plain values, never code, so an untrusted file cannot run code.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at '{path}'")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        raise ValueError(f"'{path}' is not a torch_staged checkpoint "
                         f"(expected format '{FORMAT}')")
    return state


def load_model(path: Union[str, os.PathLike], map_location=None) -> Tuple[Any, Dict]:
    """Rebuilds the :class:`~torch_staged.models.STAGED` model of a checkpoint
    (best parameters when the fit kept them) and returns ``(model, checkpoint)``.
    """
    from torch_staged.models import STAGED
    state = load_checkpoint(path, map_location)
    model = STAGED.from_config(state['config'])
    best = state.get('best') or {}
    model.load_state_dict(best.get('state') or state['model'])
    return model, state
