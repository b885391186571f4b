"""Parameter checks and seeded random streams shared by the simulators (:mod:`.fiac`, :mod:`.bids_sim`).

Each check returns the value in its canonical type (what the simulators' markers
record, so that equal parameters give byte-identical files) or raises a
``ValueError`` naming the parameter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_SCANS", "stream_rng", "check_int", "check_float", "check_tuple", "check_timing"]

#: Fewest scans a simulated run may have.
MIN_SCANS = 20


def stream_rng(seed: int, *keys: int) -> np.random.Generator:
    """The random stream ``keys`` of simulation ``seed`` (independent of every other stream)."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, *, positive: bool = False) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(out) or (out <= 0 if positive else out < 0):
        kind = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {kind}, got {value!r}")
    return out


def check_tuple(name: str, value: Any, n: int, kind: str) -> tuple:
    """``value`` as a length-``n`` tuple of positive ints (``kind="int"``) or floats >= 0."""
    items = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else ()
    is_int = [isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items]
    if len(items) != n or (kind == "int" and not all(is_int)):
        raise ValueError(f"{name} must be a tuple of {n} {kind}s, got {value!r}")
    if kind == "int":
        if any(v <= 0 for v in items):
            raise ValueError(f"{name} entries must be positive, got {value!r}")
        return tuple(int(v) for v in items)
    return tuple(check_float(name, v) for v in items)


def check_timing(n_scans: Any, t_r: Any) -> tuple[int, float]:
    return check_int("n_scans", n_scans, MIN_SCANS), check_float("t_r", t_r, positive=True)
