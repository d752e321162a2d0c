r"""Full models: the STAGED graph neural ODE."""
from torch_staged.models.staged import STAGED, IntegrationError

__all__ = ['STAGED', 'IntegrationError']
