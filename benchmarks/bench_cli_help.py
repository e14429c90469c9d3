"""How long ``gradedit --help`` takes (cold process each time), next to a bare ``python -c pass``.

usage: python benchmarks/bench_cli_help.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(cmd: list[str], runs: int) -> float:
    """Median wall time in seconds of ``runs`` fresh processes."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("gradedit"))
    python = wall([sys.executable, "-c", "pass"], args.runs)
    help_ = wall([exe, "--help"], args.runs)
    torch = wall([sys.executable, "-c", "import torch"], args.runs)
    print(f"python -c pass      {python:.3f} s")
    print(f"gradedit --help     {help_:.3f} s  ({help_ / python:.1f}x bare python)")
    print(f"python -c 'import torch'  {torch:.3f} s  (what --help cost before lazy imports, at least)")


if __name__ == "__main__":
    main()
