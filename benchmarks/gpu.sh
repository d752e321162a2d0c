#!/usr/bin/env bash
# The GPU checks of the fused-kernel issue, as one script for a lent GPU (run from the
# repository root, after `make setup` with a CUDA build of torch, e.g.
# `make setup TORCH_SPEC="torch==2.14.1"`). Writes results/*_gpu.json.
set -euo pipefail
PY=${PY:-.venv/bin/python}
mkdir -p results
nvidia-smi --query-gpu=name,memory.total --format=csv
# correctness first: the Triton kernels against the cuSPARSE path on the GPU
TORCH_STAGED_TRITON=1 $PY - <<'PYEOF'
import torch
from torch_staged.nn._sparse import _backward, _forward, csr_plan
from torch_staged.nn import _triton
g = torch.Generator(device='cuda').manual_seed(0)
E, N, S, H, D = 200_000, 20_000, 40_000, 2, 9
src = torch.randint(N, (E, ), device='cuda', generator=g)
seg = torch.randint(S, (E, ), device='cuda', generator=g)
p = csr_plan(src, seg, S, N)
for dt in (torch.float64, torch.float32):
    a = torch.randn(E, H, device='cuda', dtype=dt, generator=g)
    x = torch.randn(N, D, device='cuda', dtype=dt, generator=g)
    gr = torch.randn(S, H, D, device='cuda', dtype=dt, generator=g)
    got = [_triton.csr_forward(a, x, p.ptr, p.col, p.perm, S),
           *_triton.csr_backward(gr, a, x, *p[:6], True, True)]
    import os; os.environ['TORCH_STAGED_TRITON'] = '0'
    want = [_forward(a, x, p.ptr, p.col, p.perm, S), *_backward(gr, a, x, *p[:6], S, True, True)]
    os.environ['TORCH_STAGED_TRITON'] = '1'
    print(dt, 'max |triton - cusparse|', max((u - v).abs().max().item() for u, v in zip(got, want)))
PYEOF
$PY benchmarks/conv.py --device cuda --cells 100000 1000000 \
    --impl staged_default staged_default_triton heteroconv_gat heteroconv --runs 5 \
    --json results/conv_gpu.json
$PY benchmarks/scaling.py --device cuda --cells 100000 1000000 --runs 3 \
    --json results/scaling_gpu.json
