import torch

# The test graphs are tiny: one intra-op thread avoids oversubscription on the
# 2-core CI machines (and is faster for small kernels).
torch.set_num_threads(1)
