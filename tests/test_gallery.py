"""Every gallery kernel agrees with its NumPy reference on every CPU target and schedule."""

from __future__ import annotations

import numpy as np
import pytest

import veda
from veda_kernels import GALLERY, get


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_gallery_matches_numpy(name, settings):
    case = GALLERY[name]
    rng = np.random.default_rng(42)
    domain, args = case.make(case.small, rng)
    case.poison(args)  # a launch that skips part of its output cannot pass
    case.check(domain, args, veda.launch(case.kernel, domain, *args, **settings))


def test_gallery_lookup():
    assert get("saxpy").kernel is GALLERY["saxpy"].kernel
    with pytest.raises(veda.UnknownKernelError, match="saxpy"):
        get("nope")


@pytest.mark.parametrize(
    "module",
    ["veda_kernels", "veda_kernels.montecarlo", "veda_kernels.peers", "veda_kernels.suite"],
)
def test_gallery_docstring_examples(module):
    # pytest's --doctest-modules covers veda/; the gallery installs under another name.
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
