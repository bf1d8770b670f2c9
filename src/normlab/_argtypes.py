"""Argument types of the command line: numbers checked against their valid range when parsed.

Each is an ``argparse`` ``type=``: a bad value (0 where a positive number is needed, a negative
one, inf or nan, a word) makes argparse report ``argument --FLAG: must be ... , got VALUE``, so
that the error names the flag and the valid range before any work starts::

    parser.add_argument("--width", type=positive_int)
    parser.add_argument("--lr", type=number(low=0.0, low_open=True))
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (either end open-ended when None)."""
    if low == 1 and high is None:
        kind = "a positive integer (1, 2, ...)"
    elif low == 0 and high is None:
        kind = "a non-negative integer (0, 1, ...)"
    elif low in (0, 1) and high is not None:
        kind = f"a {'positive' if low else 'non-negative'} integer ({low} to {high})"
    else:
        left, right = "-inf" if low is None else low, "inf" if high is None else high
        kind = f"an integer in [{left}, {right}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def number(
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """A finite number in the interval from ``low`` to ``high`` (each end open or closed)."""
    left = "(" if low_open or math.isinf(low) else "["
    right = ")" if high_open or math.isinf(high) else "]"
    kind = f"a finite number in {left}{_show(low)}, {_show(high)}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        inside = math.isfinite(value)
        inside = inside and (value > low if low_open else value >= low)
        inside = inside and (value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _show(bound: float) -> str:
    if math.isinf(bound):
        return "inf" if bound > 0 else "-inf"
    return f"{bound:g}"


positive_int = integer(low=1)
non_negative_int = integer(low=0)
positive_float = number(low=0.0, low_open=True)
non_negative_float = number(low=0.0)
finite_float = number()
fraction = number(low=0.0, high=1.0, high_open=True)  # [0, 1)
