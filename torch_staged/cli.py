"""The ``torch-staged`` command line."""
import argparse
import json
import os
import sys
import time
from typing import List, Optional


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _demo(args: argparse.Namespace) -> None:
    import torch

    from torch_staged.models import STAGED
    from torch_staged.testing import linear_coupled_tissue
    from torch_staged.train import fit

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    tic = time.perf_counter()
    data, X, t = linear_coupled_tissue(num_cells=args.cells, seed=args.seed)
    model = STAGED(data.num_genes, data.num_cell_types, hidden_channels=8,
                   mlp_channels=16)
    holdout = 3
    result = fit(model, data, X, t, epochs=args.epochs, lr=0.02, holdout_size=holdout,
                 patience=None, cell_order='graph', progress=not args.quiet,
                 checkpoint=os.path.join(args.out, 'checkpoint.pt'),
                 history_path=os.path.join(args.out, 'history.json'))
    last = t.numel() - 1 - holdout
    with torch.no_grad():
        pred = model(data, t[last:], X[last])[1:]
    truth = X[last + 1:]
    mse = float(((pred - truth) ** 2).mean())
    r2 = 1 - mse / float(((truth - truth.mean((0, 1))) ** 2).mean())
    metrics = {'staged': {'heldout_mse': mse, 'heldout_r2': r2,
                          'epochs': len(result.history)},
               'seconds': time.perf_counter() - tic}
    with open(os.path.join(args.out, 'metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
    print(f"STAGED on a {args.cells}-cell linear coupled tissue: held-out R^2 = "
          f"{r2:.4f}, MSE = {mse:.3g} ({metrics['seconds']:.1f} s). "
          f"Results in {args.out}/")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torch-staged``."""
    parser = argparse.ArgumentParser(
        prog='torch-staged',
        description='STAGED graph neural ODEs of cell-cell communication.')
    sub = parser.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help='Fit STAGED end to end on built-in simulated '
                          'data and write metrics and figures.')
    demo.add_argument('--out', default='runs/demo', help='Output folder.')
    demo.add_argument('--cells', type=int, default=60)
    demo.add_argument('--epochs', type=int, default=40)
    demo.add_argument('--seed', type=int, default=0)
    demo.add_argument('--threads', type=int, default=1)
    demo.add_argument('--quiet', action='store_true', help='No progress bar.')
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``torch-staged`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (CLIError, FileNotFoundError, ValueError, KeyError) as err:
        print(f'torch-staged {args.command}: error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
