"""The ``torch-staged`` command line."""
import argparse
import sys
from typing import List, Optional


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _demo(args: argparse.Namespace) -> None:
    import torch

    from torch_staged._demo import run_demo, summary_table

    torch.set_num_threads(args.threads)
    metrics = run_demo(args.out, epochs=args.epochs, holdout=args.holdout, seed=args.seed,
                       progress=not args.quiet, num_cells=args.cells,
                       num_genes=args.genes)
    print(summary_table(metrics))
    print(f'metrics and figures written to {args.out}/')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torch-staged``."""
    parser = argparse.ArgumentParser(
        prog='torch-staged',
        description='STAGED graph neural ODEs of cell-cell communication.')
    sub = parser.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help='Fit STAGED end to end on built-in simulated '
                          'data and write metrics and figures.')
    demo.add_argument('--out', default='runs/demo', help='Output folder.')
    demo.add_argument('--cells', type=int, default=300, help='simulated cells')
    demo.add_argument('--genes', type=int, default=20, help='simulated genes')
    demo.add_argument('--epochs', type=int, default=30)
    demo.add_argument('--holdout', type=int, default=4,
                      help='held-out final time points')
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
