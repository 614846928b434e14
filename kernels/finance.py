"""Option pricing: Black-Scholes prices of European calls and puts."""

from __future__ import annotations

import math

import numpy as np

import veda

_SQRT1_2 = 1.0 / math.sqrt(2.0)


@veda.func
def norm_cdf(x):
    """The standard normal distribution function, exact to rounding (through ``erfc``)."""
    return 0.5 * math.erfc(-x * _SQRT1_2)


@veda.kernel
def black_scholes(i, spot, strike, years, rate, vol, call, put):
    """Black-Scholes call and put prices for option ``i`` (no dividends)."""
    s = spot[i]
    k = strike[i]
    t = years[i]
    root_t = math.sqrt(t)
    d1 = (math.log(s / k) + (rate + 0.5 * vol * vol) * t) / (vol * root_t)
    d2 = d1 - vol * root_t
    discounted = k * math.exp(-rate * t)
    call[i] = s * norm_cdf(d1) - discounted * norm_cdf(d2)
    put[i] = discounted * norm_cdf(-d2) - s * norm_cdf(-d1)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def black_scholes_reference(spot, strike, years, rate, vol):
    """``(call, put)`` in NumPy, with the exact ``erfc`` applied element by element."""
    root_t = np.sqrt(years)
    d1 = (np.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / (vol * root_t)
    d2 = d1 - vol * root_t
    discounted = strike * np.exp(-rate * years)

    def cdf(x):
        return 0.5 * _erfc(-x * _SQRT1_2).astype(np.float64)

    return spot * cdf(d1) - discounted * cdf(d2), discounted * cdf(-d2) - spot * cdf(-d1)


# Abramowitz and Stegun 26.2.17: |error| < 7.5e-8.  NumPy has no erf, so this is what a NumPy
# program prices with; the benchmarks use it as NumPy's version of the kernel.
_AS_P = 0.2316419
_AS_B = (0.319381530, -0.356563782, 1.781477937, -1.821255978, 1.330274429)


def _cdf_polynomial(x):
    t = 1.0 / (1.0 + _AS_P * np.abs(x))
    poly = t * (_AS_B[0] + t * (_AS_B[1] + t * (_AS_B[2] + t * (_AS_B[3] + t * _AS_B[4]))))
    tail = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi) * poly
    return np.where(x >= 0.0, 1.0 - tail, tail)


def black_scholes_numpy(spot, strike, years, rate, vol, call, put):
    """Vectorised NumPy pricing with a polynomial normal CDF (absolute error < 7.5e-8)."""
    root_t = np.sqrt(years)
    d1 = (np.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / (vol * root_t)
    d2 = d1 - vol * root_t
    discounted = strike * np.exp(-rate * years)
    call[...] = spot * _cdf_polynomial(d1) - discounted * _cdf_polynomial(d2)
    put[...] = discounted * _cdf_polynomial(-d2) - spot * _cdf_polynomial(-d1)
