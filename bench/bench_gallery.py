"""Every gallery kernel: veda against NumPy, hand-written Numba (@njit and prange) and numexpr,
at the small and large sizes, with the machine's bandwidth ceiling (best triad).

Goal (issue 7): at the large size no kernel slower than the best CPU peer by more than 5%, and
streaming kernels at >= 90% of the measured bandwidth ceiling.

    python bench/bench_gallery.py            # writes bench/results/gallery.json and .png
    veda bench --compare A.json B.json       # ratio per case between two runs
"""

from __future__ import annotations

import sys

from veda.cli import main

from _util import RESULTS

if __name__ == "__main__":
    sys.exit(main(["bench", "--out", str(RESULTS / "gallery.json"), *sys.argv[1:]]))
