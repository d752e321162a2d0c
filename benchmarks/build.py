"""Time and peak memory of building the standard tissue graph (DESIGN.md section 6).

    python benchmarks/build.py --cells 1000 100000 1000000
"""
import argparse
import json
import resource
import subprocess
import sys
import time


def _one(num_cells: int) -> dict:
    import numpy as np
    import pandas as pd

    from torch_staged.data import build_tissue_graph
    rng = np.random.default_rng(0)
    genes = [f'g{i}' for i in range(50)]
    pos = rng.uniform(0, np.sqrt(num_cells), (num_cells, 2))
    cell_type = rng.integers(0, 3, num_cells)
    pairs = [(genes[i], genes[10 + i]) for i in range(10)]
    rows = [(genes[s], genes[g], t) for t in range(3) for g in range(50)
            for s in rng.choice(np.delete(np.arange(50), g), 5, replace=False)]
    grn = pd.DataFrame(rows, columns=['source', 'target', 'cell_type'])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tic = time.perf_counter()
    data = build_tissue_graph(pos, cell_type, genes, pairs, grn, k=8)
    seconds = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(cells=num_cells, seconds=seconds, peak_rss_bytes=peak,
                peak_rss_increase_bytes=peak - base, **data.edge_counts())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--cells', type=int, nargs='+', default=[1000, 100000, 1000000])
    parser.add_argument('--json', default=None)
    parser.add_argument('--single', type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(_one(args.single)))
        return
    records = []
    for n in args.cells:  # one process per size: an honest peak RSS
        out = subprocess.run([sys.executable, __file__, '--single', str(n)],
                             capture_output=True, text=True, check=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        records.append(rec)
        print(f"{n:>9} cells: {rec['seconds']:7.2f} s, peak RSS "
              f"{rec['peak_rss_bytes'] / 1e9:6.2f} GB, edges near={rec['near']} "
              f"regulates={rec['regulates']} signals={rec['signals']}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(records, f, indent=1)


if __name__ == '__main__':
    main()
