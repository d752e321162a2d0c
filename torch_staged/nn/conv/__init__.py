from torch_staged.nn.conv.staged_conv import STAGEDConv

__all__ = ['STAGEDConv']
