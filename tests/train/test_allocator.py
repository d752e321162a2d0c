import platform
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
