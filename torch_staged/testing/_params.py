"""Parameters away from their start, for tests of the fast paths."""
import torch


def perturb_parameters(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    r"""Adds :math:`\mathcal{N}(0, \text{scale}^2)` noise to every parameter of
    :obj:`module` in place (drawn from torch's global generator, parameter by
    parameter) and returns it, so that a test exercises every parameter: a
    fresh layer has zero biases, and its signed gates all start at the same
    value (0 with GATv2), which would hide terms of the computation.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module
