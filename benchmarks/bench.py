"""MD speed of the plug-in per backend x policy against openmm-ml 1.8, on the GPU node.

The same harness as ``mace-lp bench`` (``openmm_mace_lp/bench.py`` documents every column):

    python benchmarks/bench.py --atoms 1029 3000 10000 30000 -o benchmarks/results/bench_<card>.json
    python benchmarks/bench.py --smoke --atoms 192 -o /tmp/bench.json   # CPU dry run
"""
import sys

from openmm_mace_lp.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
