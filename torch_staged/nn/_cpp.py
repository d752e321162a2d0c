r"""The package's compiled CPU kernels (``csrc/cpu_kernels.cpp``), built on first use.

The edge aggregation of ``backend='sparse'`` and the per-cell-type value
matrices run as C++ loops over rows (threads from :func:`torch.set_num_threads`)
when these kernels are available, and as pure-PyTorch code otherwise (MKL
sparse products, a loop over cell types): both compute the same sums, and
tests hold them to agreement in outputs and gradients.

The library is compiled with :func:`torch.utils.cpp_extension.load` into
PyTorch's extension cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``) the first time it is needed, which takes 20 s
to a minute, and loaded from there afterwards; ``make setup`` builds it ahead
(:func:`build`). Without a C++ compiler (or ninja) the package warns once and uses the PyTorch
code. Set ``TORCH_STAGED_CPP=0`` in the environment, or call
:func:`torch_staged.nn.use_cpp_kernels` with :obj:`False`, to use the PyTorch code
only.

On x86-64 CPUs with AVX-512 the float32 loops run vectorised (16 lanes; detected at
run time, so the cached build runs on any x86-64 machine). They multiply and add in
the portable loops' order, without fused multiply-adds, so both give the same bits.
``TORCH_STAGED_SIMD=0`` in the environment, or :func:`use_simd` with :obj:`False`,
keeps the portable loops (float64 always takes them).
"""
import logging
import os
import threading
import warnings
from typing import Optional

import torch

log = logging.getLogger(__name__)

NAME = 'torch_staged_cpu'
SOURCE = os.path.join(os.path.dirname(__file__), 'csrc', 'cpu_kernels.cpp')

_lock = threading.Lock()
_state = {'loaded': None, 'enabled': None}


def _switched_on(variable: str) -> bool:
    return os.environ.get(variable, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def _enabled_by_environment() -> bool:
    return _switched_on('TORCH_STAGED_CPP')


def use_cpp_kernels(enabled: Optional[bool] = None) -> bool:
    """Turns the compiled CPU kernels on or off for this process (:obj:`None`
    returns to the ``TORCH_STAGED_CPP`` environment setting) and returns
    whether they will be used, compiling them first if needed.
    """
    _state['enabled'] = enabled
    return cpp_kernels_available()


def _build(verbose: bool = False) -> None:
    from torch.utils.cpp_extension import load
    load(name=NAME, sources=[SOURCE], extra_cflags=['-O3', '-fopenmp', '-ffp-contract=off'],
         extra_ldflags=['-fopenmp'], is_python_module=False, verbose=verbose)


def _constant_for_compile(fn):
    """Lets :func:`torch.compile` call :obj:`fn` while tracing and use its result
    as a constant (the kernels' availability does not change during a trace).
    """
    mark = getattr(getattr(torch, 'compiler', None), 'assume_constant_result', None)
    return fn if mark is None else mark(fn)


def use_simd(enabled: Optional[bool] = None) -> bool:
    """Turns the kernels' AVX-512 float32 loops on or off for this process
    (:obj:`None` returns to the ``TORCH_STAGED_SIMD`` environment setting, on
    by default) and returns whether float32 inputs take them: :obj:`False`
    without the kernels or on a CPU without AVX-512.
    """
    if not cpp_kernels_available():
        return False
    on = _switched_on('TORCH_STAGED_SIMD') if enabled is None else enabled
    return bool(ops().simd(int(on)))


@_constant_for_compile
def cpp_kernels_available() -> bool:
    """Whether the compiled CPU kernels are on and loaded (compiles them on the
    first call if needed; warns once and returns :obj:`False` if that fails).
    """
    enabled = _state['enabled']
    if not (_enabled_by_environment() if enabled is None else enabled):
        return False
    if _state['loaded'] is None:
        with _lock:
            if _state['loaded'] is None:
                _state['loaded'] = _load()
    return _state['loaded']


def _load() -> bool:
    if hasattr(torch.ops, NAME) and hasattr(getattr(torch.ops, NAME), 'csr_aggregate'):
        return True  # loaded by another module of the process
    try:
        log.info('torch_staged: loading (compiling on first use, 20 s to a minute) its '
                 'CPU kernels')
        _build()
        _simd_from_environment()
        return True
    except Exception as err:  # no compiler, no ninja, a failed build
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(f"torch_staged: its C++ CPU kernels could not be built ({first}); "
                      "the pure-PyTorch code is used instead (same results, slower). "
                      "Set TORCH_STAGED_CPP=0 to skip the attempt.", stacklevel=3)
        return False


def _simd_from_environment() -> None:
    if not _switched_on('TORCH_STAGED_SIMD'):
        ops().simd(0)


def ops():
    """The namespace ``torch.ops.torch_staged_cpu`` of the loaded kernels."""
    return getattr(torch.ops, NAME)


def build(verbose: bool = False) -> bool:
    """Builds (or finds up to date) the kernels now, so that a first fit does
    not wait for the compiler (``make setup`` calls it), and says so. Returns
    whether they are usable; never raises.
    """
    if not _enabled_by_environment():
        print('torch_staged: TORCH_STAGED_CPP=0, the C++ kernels are not built')
        return False
    try:
        _build(verbose=verbose)
    except Exception as err:
        print(f'torch_staged: the C++ kernels could not be built ({err}); the package '
              'uses its pure-PyTorch code')
        return False
    _state['loaded'] = True
    _simd_from_environment()
    print(f'torch_staged: C++ CPU kernels ready ({NAME})')
    return True

