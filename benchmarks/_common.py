"""Shared helpers of the torch_staged benchmarks.

* :func:`standard_tissue` -- the standard benchmark tissue of DESIGN.md section 6;
* :func:`timeit` -- median and standard deviation of a callable's wall time,
  with device synchronisation around :func:`time.perf_counter`;
* :func:`peak_memory` -- peak memory of a callable above what was resident
  before it (CUDA allocator statistics, or the process' peak RSS on CPU);
* :func:`machine_info` and :func:`write_json` -- what every result file records;
* :func:`run_isolated` -- runs one configuration in a fresh Python process, so
  that CPU peak memory is not blurred by earlier configurations and an
  out-of-memory kill only loses that configuration.

Scripts in this folder are run as ``python benchmarks/<name>.py`` and import
this module as ``_common``.
"""
import ctypes
import datetime
import gc
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from torch_staged.data import TissueData, build_tissue_graph

MiB = float(1 << 20)


# --------------------------------------------------------------------------- tissue
def standard_grn(num_genes: int, num_types: int, regulators: int,
                 rng: np.random.Generator) -> pd.DataFrame:
    """Per cell type and per target gene, :obj:`regulators` distinct random
    regulators other than the target: a ``source, target, cell_type`` table.
    """
    genes = np.array([f'g{i}' for i in range(num_genes)])
    regulators = min(regulators, num_genes - 1)
    sources, targets, types = [], [], []
    for t in range(num_types):
        for g in range(num_genes):
            others = np.delete(np.arange(num_genes), g)
            chosen = rng.choice(others, regulators, replace=False)
            sources.extend(genes[chosen])
            targets.extend([genes[g]] * regulators)
            types.extend([t] * regulators)
    return pd.DataFrame({'source': sources, 'target': targets, 'cell_type': types})


def standard_lr_pairs(num_genes: int, num_pairs: int,
                      rng: np.random.Generator) -> List[Tuple[str, str]]:
    """:obj:`num_pairs` ligand -> receptor pairs. When the panel is large enough
    (``2 L <= G``) all ``2 L`` genes are distinct (each receptor gene has one
    ligand); otherwise pairs are distinct and ligand != receptor.
    """
    if 2 * num_pairs <= num_genes:
        chosen = rng.choice(num_genes, 2 * num_pairs, replace=False)
        return [(f'g{a}', f'g{b}') for a, b in chosen.reshape(num_pairs, 2)]
    if num_pairs > num_genes * (num_genes - 1):
        raise ValueError(f'{num_pairs} ligand -> receptor pairs do not fit in a '
                         f'panel of {num_genes} genes')
    pairs = set()
    while len(pairs) < num_pairs:
        a, b = rng.choice(num_genes, 2, replace=False)
        pairs.add((f'g{a}', f'g{b}'))
    return sorted(pairs)


def standard_tissue(num_cells: int, num_genes: int = 50, num_types: int = 3, k: int = 8,
                    num_pairs: int = 10, regulators: int = 5, seed: int = 0,
                    **kwargs) -> TissueData:
    r"""The standard benchmark tissue of DESIGN.md section 6.

    Cells uniform at random in a square of side :math:`\sqrt{N}` (density 1),
    uniform random cell types, a kNN neighbourhood, a GRN prior with
    :obj:`regulators` regulators per target gene per cell type, :obj:`num_pairs`
    ligand -> receptor pairs and standard-normal expression ``x`` ``[N*G, 1]``.
    With the defaults: ``E_in = 250 N``, ``E_out = 80 N``.
    """
    rng = np.random.default_rng(seed)
    side = np.sqrt(num_cells)
    pos = rng.uniform(0.0, side, (num_cells, 2))
    cell_type = rng.integers(0, num_types, num_cells)
    grn = standard_grn(num_genes, num_types, regulators, rng)
    lr_pairs = standard_lr_pairs(num_genes, num_pairs, rng)
    x = rng.standard_normal((num_cells, num_genes)).astype(np.float32)
    genes = [f'g{i}' for i in range(num_genes)]
    return build_tissue_graph(pos, cell_type, genes, lr_pairs, grn, k=k,
                              cell_types=list(range(num_types)), x=x, **kwargs)


# --------------------------------------------------------------------------- timing
def synchronize(device) -> None:
    """Waits for all queued work on :obj:`device` (no-op on CPU)."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def timeit_stats(fn: Callable[[], object], runs: int = 5, warmup: int = 2,
                 device='cpu') -> Dict[str, object]:
    """Like :func:`timeit`, with the wall-clock median and standard deviation, the
    median process CPU time (:func:`time.process_time`, all threads; less
    sensitive than wall time to other processes competing for the cores) and
    every wall time.
    """
    for _ in range(warmup):
        fn()
    times, cpu_times = [], []
    for _ in range(max(runs, 1)):
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    std = statistics.stdev(times) if len(times) > 1 else 0.0
    return {'median': statistics.median(times), 'std': std,
            'cpu_median': statistics.median(cpu_times), 'times': times}


def timeit(fn: Callable[[], object], runs: int = 5, warmup: int = 2,
           device='cpu') -> Tuple[float, float]:
    """Median and standard deviation (seconds) of :obj:`runs` calls of :obj:`fn`,
    after :obj:`warmup` untimed calls, each timed between two device
    synchronisations with :func:`time.perf_counter`.
    """
    stats = timeit_stats(fn, runs, warmup, device)
    return stats['median'], stats['std']


# --------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def _malloc_trim() -> None:
    """Hands freed heap pages back to the OS (glibc), so they do not hide
    later allocations from the RSS.
    """
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak RSS (VmHWM) of this process to its current RSS
    (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``).
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device='cpu') -> Dict[str, object]:
    """Peak memory of one call of :obj:`fn` above the memory resident just
    before it (inputs, parameters, graph: whatever the caller holds).

    * CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()``
      after :func:`torch.cuda.reset_peak_memory_stats`, i.e. bytes of tensors
      allocated by the caching allocator (not the reserved cache).
    * CPU: the increase of the process' resident set size, ``VmHWM`` during
      the call minus ``VmRSS`` before it, after a garbage collection and
      ``malloc_trim`` and a reset of ``VmHWM`` through ``/proc/self/clear_refs``.
      Where that reset is not allowed it falls back to ``ru_maxrss``, which is
      only meaningful when nothing before the call peaked higher (run the
      configuration in a fresh process, see :func:`run_isolated`).

    Returns:
        ``{'peak_bytes': int, 'baseline_bytes': int, 'method': str}``.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {'peak_bytes': int(peak - base), 'baseline_bytes': int(base),
                'method': 'cuda max_memory_allocated'}
    _malloc_trim()
    base = _proc_status_kib('VmRSS') * 1024
    if _reset_peak_rss():
        fn()
        peak = _proc_status_kib('VmHWM') * 1024
        method = 'cpu VmHWM (reset via clear_refs) - VmRSS before'
    else:
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        method = 'cpu ru_maxrss - VmRSS before (fresh process)'
    return {'peak_bytes': int(max(peak - base, 0)), 'baseline_bytes': int(base),
            'method': method}


def tensor_bytes(*objs) -> int:
    """Total storage bytes of the tensors found in :obj:`objs` (tensors, tuples,
    lists, dicts and NamedTuples, recursively; each storage counted once).
    """
    seen, total, stack = set(), 0, list(objs)
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
    return total


def default_memory_limit() -> Optional[int]:
    """80% of the memory available now (bytes), or :obj:`None` off Linux."""
    try:
        with open('/proc/meminfo') as f:
            info = {line.split(':')[0]: int(line.split()[1]) for line in f}
        return int(0.8 * info['MemAvailable'] * 1024)
    except (OSError, KeyError, ValueError):
        return None


def limit_address_space(limit_bytes: Optional[int]) -> None:
    """Caps this process' virtual memory, so that an oversized allocation raises
    (a catchable ``RuntimeError`` / ``MemoryError``) instead of inviting the
    kernel's OOM killer.
    """
    if limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def is_out_of_memory(err: BaseException) -> bool:
    """Whether :obj:`err` is an allocation failure."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in text for s in ('out of memory', "can't allocate memory",
                            'cannot allocate memory', 'not enough memory'))


# --------------------------------------------------------------------------- processes
def run_isolated(argv: Sequence[str], timeout: Optional[float] = None,
                 env: Optional[Dict[str, str]] = None) -> Dict:
    """Runs ``python <argv> --single-out FILE`` in a fresh process (with the extra
    environment variables :obj:`env`) and returns the JSON dict the child wrote to
    ``FILE``; on a crash, a kill or a timeout returns ``{'skipped': reason}``.
    """
    fd, path = tempfile.mkstemp(suffix='.json', prefix='bench_')
    os.close(fd)
    try:
        proc = subprocess.run([sys.executable, *argv, '--single-out', path],
                              timeout=timeout, stdout=sys.stderr,
                              env={**os.environ, **(env or {})})
        with open(path) as f:
            text = f.read()
        if text:
            return json.loads(text)
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            reason = f'killed by {name}'
            if -proc.returncode == signal.SIGKILL:
                reason += ' (probably the out-of-memory killer)'
            return {'skipped': reason}
        return {'skipped': f'child exited with status {proc.returncode}'}
    except subprocess.TimeoutExpired:
        return {'skipped': f'timed out after {timeout:.0f} s'}
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------- reporting
def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def machine_info(device='cpu') -> Dict[str, object]:
    """Where and with what the numbers were measured."""
    import torch_geometric

    import torch_staged

    device = torch.device(device)
    try:
        with open('/proc/meminfo') as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        mem = None
    info = {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'cpu': _cpu_model(),
        'cpu_count': os.cpu_count(),
        'cpu_affinity': len(os.sched_getaffinity(0)) if hasattr(
            os, 'sched_getaffinity') else None,
        'memory_bytes': mem,
        'torch': torch.__version__,
        'torch_geometric': torch_geometric.__version__,
        'torch_staged': getattr(torch_staged, '__version__', None),
        'numpy': np.__version__,
        'torch_num_threads': torch.get_num_threads(),
        'loadavg': os.getloadavg() if hasattr(os, 'getloadavg') else None,
        'device': str(device),
        'device_name': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                        else _cpu_model()),
    }
    if device.type == 'cuda':
        info['cuda'] = torch.version.cuda
        info['device_memory_bytes'] = torch.cuda.get_device_properties(
            device).total_memory
    try:
        import torch_scatter  # noqa: F401
        info['torch_scatter'] = torch_scatter.__version__
    except (ImportError, OSError):
        info['torch_scatter'] = None
    return info


def write_json(path: str, payload: Dict) -> None:
    """Writes :obj:`payload` as indented JSON (creating parent folders)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(payload, f, indent=2, default=str)
        f.write('\n')


def format_table(rows: List[Dict], columns: Sequence[Tuple[str, str, Callable]]) -> str:
    """A plain-text table: ``columns`` are ``(header, key, formatter)``; a missing
    or :obj:`None` value prints as ``-``.
    """
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        cells.append([fmt(row[key]) if row.get(key) is not None else '-'
                      for _, key, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ['  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)
