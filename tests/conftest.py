"""Suite-wide set-up."""

from __future__ import annotations

import pytest

from normlab.layers import compiled


@pytest.fixture(scope="session", autouse=True)
def _build_compiled_kernels():
    """Build (or load) normlab's C++ kernels once, before any test, so that the first build's half
    minute never lands inside a test with a deadline. A failed build warns and the suite runs the
    eager implementation."""
    compiled.kernels()
