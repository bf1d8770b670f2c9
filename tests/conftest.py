"""Suite-wide set-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.layers import compiled

SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(scope="session", autouse=True)
def _build_compiled_kernels():
    """Build (or load) normlab's C++ kernels once, before any test, so that the first build's half
    minute never lands inside a test with a deadline. A failed build warns and the suite runs the
    eager implementation.

    On a first build, the diagnostics' extension (``normlab_statistics``, otherwise built by
    the first diagnostics test that needs it) compiles at the same time in a subprocess, into the
    same cache, so that the two builds share the cores; the tests load it from there. If that
    build fails, the first use tries again in this process and warns as before."""
    statistics = _start_building("normlab_statistics")
    compiled.kernels()
    if statistics is not None:
        statistics.wait(timeout=600)


def _start_building(extension: str) -> subprocess.Popen | None:
    if os.environ.get("NORMLAB_COMPILED", "1") == "0":
        return None
    if any(compiled.build_directory(extension).glob("*.so")):
        return None  # built already: loaded in milliseconds when first used
    path = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from normlab.layers import compiled; compiled.kernels({extension!r})",
        ],
        env=os.environ | {"PYTHONPATH": path},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
