import platform
import subprocess
import sys

import pytest

import torch_staged.train
from torch_staged._allocator import tune_allocator

GLIBC = sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'


def test_tune_allocator_is_public_from_train():
    assert torch_staged.train.tune_allocator is tune_allocator
    assert 'tune_allocator' in torch_staged.train.__all__


@pytest.mark.skipif(not GLIBC, reason='mallopt is glibc-only')
def test_tune_allocator_applies_on_glibc(monkeypatch):
    monkeypatch.delenv('TORCH_STAGED_MALLOC', raising=False)
    # glibc accepts both values (the mmap threshold at its 32 MiB maximum)
    assert tune_allocator() is True


def test_tune_allocator_can_be_switched_off(monkeypatch):
    monkeypatch.setenv('TORCH_STAGED_MALLOC', 'default')
    assert tune_allocator() is False


_REUSE = """
import resource, sys, torch
from torch_staged.train import tune_allocator
assert tune_allocator(large=sys.argv[1] == 'large')
faults = []
for _ in range(5):  # 256 MiB, above the 32 MiB that glibc keeps by default
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[2:]))  # once the heap has grown (aligned blocks take two rounds)
"""


@pytest.mark.skipif(not GLIBC, reason='mallopt is glibc-only')
def test_large_keeps_freed_blocks_above_32_mib(monkeypatch):
    """In a child process (it changes malloc for good): with large=True freed
    256 MiB tensors are reused without touching fresh pages; without, every new
    one maps 65 536 fresh 4 KiB pages (or fewer huge ones)."""
    monkeypatch.delenv('TORCH_STAGED_MALLOC', raising=False)
    monkeypatch.delenv('THP_MEM_ALLOC_ENABLE', raising=False)

    def faults(mode):
        out = subprocess.run([sys.executable, '-c', _REUSE, mode], capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])

    assert faults('large') * 10 < faults('small')
