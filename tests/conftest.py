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

    On a first build, normlab's other extensions (``normlab_statistics``, the diagnostics' one,
    otherwise built by the first test that needs it) compile at the same time, each in a
    subprocess, into the same cache, so that the builds share the cores; the tests load them from
    there. If such a build fails, the first use tries again in this process and warns as before."""
    others = [name for name in compiled.EXTENSIONS if name != "normlab_kernels"]
    builds = [build for build in map(_start_building, others) if build is not None]
    compiled.kernels()
    for build in builds:
        build.wait(timeout=600)


def _start_building(extension: str) -> subprocess.Popen | None:
    """A subprocess building ``extension`` into the cache, or None where there is nothing to
    build (kernels turned off, or built already: then loaded in milliseconds when first used)."""
    if os.environ.get("NORMLAB_COMPILED", "1") == "0":
        return None
    if any(compiled.build_directory(extension).glob("*.so")):
        return None
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
