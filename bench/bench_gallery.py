"""Every gallery kernel: veda against NumPy, hand-written Numba (@njit and prange) and numexpr,
at the small and large sizes, with the machine's bandwidth ceiling (best triad).

Goal (issue 7): at the large size no kernel slower than the best CPU peer by more than 5%, and
streaming kernels at >= 90% of the measured bandwidth ceiling.

    python bench/bench_gallery.py            # writes bench/results/gallery.json and .png
    python bench/bench_gallery.py --quick    # every kernel at its small size, NumPy peer only
    veda bench --compare A.json B.json       # ratio per case between two runs

Other options are ``veda bench``'s (``--kernels``, ``--sizes``, ``--peers``, ``--repeats``,
``--budget``, ``--out``).  Every result is checked against NumPy's: the exit status is 1 when
one differs.
"""

from __future__ import annotations

import sys

from veda.cli import main
from veda_kernels import suite

from _util import parser, results_dir

if __name__ == "__main__":
    args, rest = parser(__doc__).parse_known_args()
    head = ["bench", "--out", str(results_dir(args.quick) / "gallery.json")]
    if args.quick:
        # veda bench --quick: small sizes, 3 repeats.  Only the NumPy peer unless --peers says
        # otherwise (the Numba peers cost seconds of compiling each), and no pause for BLAS
        # threads (it only protects the timings).
        head.append("--quick")
        if not any(a.startswith("--peers") for a in rest):
            head += ["--peers", "numpy"]
        suite.SPIN_PAUSE = 0.0
    sys.exit(main([*head, *rest]))
