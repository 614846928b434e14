"""Particle kernels: one step of a direct-sum gravitational n-body simulation."""

from __future__ import annotations

import math

import numpy as np

import veda


@veda.kernel
def nbody_step(i, pos, vel, mass, dt, eps2, vel_out):
    """Kick: ``vel_out[i] = vel[i] + dt * a_i``, ``a_i = sum_j m_j d_ij / (|d_ij|^2 + eps2)^1.5``.

    ``pos`` and ``vel`` are ``(n, 3)``; ``eps2`` softens close encounters (and makes the j = i
    term zero).  Each index does n interactions: the O(n^2) part of a time step.  The drift,
    ``pos += dt * vel_out``, is one NumPy line.
    """
    xi = pos[i, 0]
    yi = pos[i, 1]
    zi = pos[i, 2]
    ax = 0.0
    ay = 0.0
    az = 0.0
    for j in range(pos.shape[0]):
        dx = pos[j, 0] - xi
        dy = pos[j, 1] - yi
        dz = pos[j, 2] - zi
        r2 = dx * dx + dy * dy + dz * dz + eps2
        s = mass[j] / (r2 * math.sqrt(r2))
        ax += s * dx
        ay += s * dy
        az += s * dz
    vel_out[i, 0] = vel[i, 0] + dt * ax
    vel_out[i, 1] = vel[i, 1] + dt * ay
    vel_out[i, 2] = vel[i, 2] + dt * az


def nbody_reference(pos, vel, mass, dt, eps2, rows=256):
    """The same kick in NumPy, broadcasting over blocks of ``rows`` bodies to bound memory."""
    out = np.empty_like(vel)
    for start in range(0, pos.shape[0], rows):
        d = pos[None, :, :] - pos[start : start + rows, None, :]
        r2 = np.einsum("ijk,ijk->ij", d, d) + eps2
        s = mass[None, :] / (r2 * np.sqrt(r2))
        out[start : start + rows] = vel[start : start + rows] + dt * np.einsum("ij,ijk->ik", s, d)
    return out
