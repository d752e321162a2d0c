r"""Full models: the STAGED graph neural ODE."""
from torch_staged.models.staged import BASELINES, STAGED, IntegrationError, make_model

__all__ = ['STAGED', 'IntegrationError', 'make_model', 'BASELINES']
