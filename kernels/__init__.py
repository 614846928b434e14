"""veda's kernel gallery (installed as ``veda_kernels``).

Each entry is a kernel written with ``@veda.kernel``, a NumPy reference that computes the same
thing, and a function that makes inputs of a given size.  The demo, the benchmarks and the tests
all draw on this list.

>>> from veda_kernels import GALLERY
>>> sorted(GALLERY)[:3]
['dot', 'histogram', 'jacobi2d']
"""

from veda_kernels._registry import GALLERY, Case, get

__all__ = ["GALLERY", "Case", "get"]
