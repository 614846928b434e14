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
    value = veda.launch(case.kernel, domain, *args, **settings)
    got = case.result(args, value)
    expected = case.expected(domain, args)
    if case.exact:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=1e-12)
    assert case.agrees(got, expected)


def test_gallery_lookup():
    assert get("saxpy").kernel is GALLERY["saxpy"].kernel
    with pytest.raises(veda.UnknownKernelError, match="saxpy"):
        get("nope")


@pytest.mark.parametrize("module", ["veda_kernels", "veda_kernels.montecarlo",
                                    "veda_kernels.peers", "veda_kernels.suite"])
def test_gallery_docstring_examples(module):
    # pytest's --doctest-modules covers veda/; the gallery installs under another name.
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
