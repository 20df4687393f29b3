"""Atomic X-ray form factors (Waasmaier-Kirfel), exactly as skopi tabulates them.

Conventions (same as skopi): a scattering vector ``q`` is ``k_out - k_in`` with
``|k| = 1/lambda`` (no 2 pi), so ``|q| = 2 sin(theta) / lambda`` where ``2 theta`` is the
scattering angle; the scattered phase of an atom at ``r`` is ``2 pi q . r``. The
Waasmaier-Kirfel formula is written in ``s = sin(theta)/lambda = |q|/2`` (1/angstrom):

    f(s) = sum_i a_i exp(-b_i s^2) + c          (electrons)

The coefficient table is skopi's own (``skopi.ff_waaskirf_database``), loaded lazily so
that importing this module does not import skopi.
"""
from __future__ import annotations

import functools

import numpy as np

# Element symbols by atomic number (1..98), the range of the Waasmaier-Kirfel table.
_SYMBOLS = (
    "H HE LI BE B C N O F NE NA MG AL SI P S CL AR K CA SC TI V CR MN FE CO NI CU ZN GA GE AS SE "
    "BR KR RB SR Y ZR NB MO TC RU RH PD AG CD IN SN SB TE I XE CS BA LA CE PR ND PM SM EU GD TB "
    "DY HO ER TM YB LU HF TA W RE OS IR PT AU HG TL PB BI PO AT RN FR RA AC TH PA U NP PU AM CM "
    "BK CF"
).split()
_Z = {sym: z for z, sym in enumerate(_SYMBOLS, start=1)}
# Hydrogen isotopes are scattered like hydrogen.
_ALIASES = {"D": "H", "T": "H"}
KNOWN_ELEMENTS = frozenset(_SYMBOLS)


def normalise_element(symbol) -> str:
    """Upper-case, stripped element symbol with isotopes folded (``"Fe" -> "FE"``, ``"D" -> "H"``)."""
    s = str(symbol).strip().upper()
    return _ALIASES.get(s, s)


def atomic_number(symbol) -> int:
    """Atomic number of an element symbol; ``KeyError`` names the symbol if unknown."""
    s = normalise_element(symbol)
    try:
        return _Z[s]
    except KeyError:
        raise KeyError(f"unknown element symbol {symbol!r}") from None


@functools.lru_cache(maxsize=1)
def _waaskirf_table() -> np.ndarray:
    from skopi.ff_waaskirf_database import load_waaskirf_database  # lazy: skopi is heavy
    return np.asarray(load_waaskirf_database(), dtype=np.float64)


@functools.lru_cache(maxsize=None)
def waaskirf_coefficients(symbol) -> np.ndarray:
    """``(a1..a5, c, b1..b5)`` of the neutral atom, shape (11,), from skopi's table."""
    z = atomic_number(symbol)
    table = _waaskirf_table()
    row = table[(table[:, 0] == z) & (table[:, 1] == 0)]
    if row.shape[0] == 0:  # pragma: no cover - every Z in 1..98 is tabulated
        raise KeyError(f"no Waasmaier-Kirfel coefficients for {symbol!r}")
    return row[0, 2:].copy()


def form_factor(symbol, q_norm_inv_angstrom) -> np.ndarray:
    """Form factor of a neutral atom in electrons.

    Parameters
    ----------
    symbol : str
        Element symbol.
    q_norm_inv_angstrom : array_like
        ``|q| = 2 sin(theta)/lambda`` in 1/angstrom (skopi's reciprocal-space convention).

    Returns
    -------
    ndarray, same shape as ``q_norm_inv_angstrom``
        ``f(s)`` with ``s = |q|/2``; ``f(0)`` is close to the atomic number.
    """
    a1, a2, a3, a4, a5, c, b1, b2, b3, b4, b5 = waaskirf_coefficients(symbol)
    s2 = (np.asarray(q_norm_inv_angstrom, dtype=np.float64) / 2.0) ** 2
    return (a1 * np.exp(-b1 * s2) + a2 * np.exp(-b2 * s2) + a3 * np.exp(-b3 * s2)
            + a4 * np.exp(-b4 * s2) + a5 * np.exp(-b5 * s2) + c)
