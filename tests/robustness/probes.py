"""Helpers of the robustness probes: an error is clear when it has the right type and its message
names the offending argument and the valid range or choices."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import pytest

RAW_TORCH = re.compile(
    r"Expected \dD|expected scalar type|received an invalid combination|Tensor on device|"
    r"cannot be called on meta|Dimension out of range|Given groups=|not supported between"
)


@contextlib.contextmanager
def clear_error(error: type[BaseException], *fragments: str) -> Iterator[None]:
    """Expect ``error`` whose message holds every fragment (and none of torch's raw words)."""
    with pytest.raises(error) as info:
        yield
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not RAW_TORCH.search(message), message


def check(build, error, fragments) -> None:
    """``build()`` raises ``error`` naming ``fragments`` (a string or a tuple of strings)."""
    fragments = (fragments,) if isinstance(fragments, str) else tuple(fragments)
    with clear_error(error, *fragments):
        build()


def ids(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."
