"""veda's kernel gallery (installed as ``veda_kernels``).

Each entry is a kernel written with ``@veda.kernel``, a NumPy reference that computes the same
thing, and a function that makes inputs of a given size.  The demo, the benchmarks and the tests
all draw on this list; :mod:`veda_kernels.peers` holds the same computations written by hand for
NumPy, Numba and numexpr, and :mod:`veda_kernels.suite` measures veda against them.

>>> import numpy as np
>>> from veda_kernels import GALLERY
>>> sorted(GALLERY)[:4]
['black_scholes', 'dot', 'heat3d', 'histogram']
>>> case = GALLERY["softmax"]
>>> domain, args = case.make(1024, np.random.default_rng(0))
>>> case.kernel[domain](*args)
>>> case.agrees(case.result(args, None), case.expected(domain, args))
True
"""

from veda_kernels._registry import GALLERY, Case, get

__all__ = ["GALLERY", "Case", "get"]
