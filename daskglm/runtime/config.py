"""daskglm's settings in dask's config: durations and sizes, read and checked in one place.

Every ``daskglm.*`` key can be set with ``dask.config.set({"daskglm.<key>": value})``
or as ``DASK_DASKGLM__<KEY>`` in the environment. A value that is not what the
key takes is a ``ValueError`` naming the key and the value.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any

import dask
from dask.utils import parse_bytes, parse_timedelta

__all__ = ["config_bytes", "config_seconds", "config_number"]

#: What means "not set" for keys that may be unset (dask reads ``none`` from YAML and the environment).
_UNSET = (None, "", "none", "null")


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _UNSET)


def config_seconds(key: str, default: Any, *, zero: bool = False, none_means: str | None = None) -> float | None:
    """The duration of dask config ``key``, in seconds.

    Parameters
    ----------
    key : str
    default : float, str or None
        Used when ``key`` is not set.
    zero : bool
        Whether 0 is allowed (else the duration must be positive).
    none_means : str, optional
        What ``None`` means for this key: then ``None`` is returned for it;
        without it, ``None`` is an error.

    Raises
    ------
    ValueError
        Not a finite duration (seconds, or a string such as ``"60s"``), or not allowed.
    """
    value = dask.config.get(key, default)
    if value is None and none_means is not None:
        return None
    seconds = math.nan
    if not isinstance(value, bool) and value is not None:
        with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError, OverflowError):
            seconds = float(parse_timedelta(value, default="s"))
    if not (math.isfinite(seconds) and (seconds >= 0 if zero else seconds > 0)):
        kind = "a duration >= 0" if zero else "a positive duration"
        unset = f" (None: {none_means})" if none_means is not None else ""
        raise ValueError(f"dask config {key!r} must be {kind}: seconds, or a string such as '60s' or "
                         f"'5 minutes'{unset}; got {value!r}")
    return seconds


def config_bytes(key: str, default: Any, *, none_means: str | None = None) -> int | None:
    """The size of dask config ``key``, in bytes (>= 0).

    Parameters
    ----------
    key : str
    default : int, str or None
        Used when ``key`` is not set.
    none_means : str, optional
        What an unset value (``None``, ``"none"``) means for this key: then
        ``None`` is returned for it; without it, it is an error.

    Raises
    ------
    ValueError
        Not a non-negative number of bytes or a size string such as ``"512 MiB"``.
    """
    value = dask.config.get(key, default)
    if none_means is not None and _unset(value):
        return None
    number: Any = math.nan
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            number = parse_bytes(value) if isinstance(value, str) else value
    if not isinstance(number, numbers.Real) or not number >= 0 or not math.isfinite(number):
        unset = f" (none: {none_means})" if none_means is not None else ""
        raise ValueError(f"dask config {key!r} must be a non-negative number of bytes, or a string such as "
                         f"'512 MiB'{unset}; got {value!r}")
    return int(number)


def config_number(key: str, default: float) -> float:
    """The finite number >= 0 of dask config ``key`` (e.g. a length in millimetres).

    Raises
    ------
    ValueError
        Not a finite number >= 0.
    """
    value = dask.config.get(key, default)
    number = math.nan
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"dask config {key!r} must be a finite number >= 0; got {value!r}")
    return number
