"""normlab's C++ kernels, built on first use and cached; eager PyTorch is the fallback.

Three extensions, each one source in ``csrc/``: ``normlab_kernels`` (``group_norm_pn.cpp``) runs
GN (LN, IN) + relu-PN on CPU as one native autograd node (see :mod:`normlab.layers.group_norm_pn`
for the same step in Python); ``normlab_tails`` (``pn_tail.cpp``) runs PN's activation step after
any normalizer, for every built-in φ, as one vectorised pass each way (:mod:`normlab.layers.tails`
for the Python reference); ``normlab_statistics`` (``plane_moments.cpp``) is the diagnostics'
one-pass per-plane reduction (:func:`normlab.diagnostics.statistics.plane_moments`). Each is
compiled with torch's JIT extension builder (a C++ compiler and ninja are needed) into
``$NORMLAB_CACHE`` (default ``~/.cache/normlab``), about half a minute on the first use of a given
source and torch version, and loaded from there afterwards. Where it cannot be built, normlab warns
once and runs the eager implementation, which computes the same step.

``NORMLAB_COMPILED=0`` in the environment, or :func:`set_compiled_kernels` ``(False)``, turns the
kernels off.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from .._checks import check_bool

CSRC = Path(__file__).with_name("csrc")
EXTENSIONS: dict[str, Path] = {
    "normlab_kernels": CSRC / "group_norm_pn.cpp",
    "normlab_statistics": CSRC / "plane_moments.cpp",
    "normlab_tails": CSRC / "pn_tail.cpp",
}
# OpenMP makes ATen's parallel_for parallel, served by the runtime torch has loaded (Linux's
# libgomp); elsewhere the kernel builds without it and runs its loops on one thread.
_FLAGS = ["-O3", "-fopenmp"] if sys.platform.startswith("linux") else ["-O3"]
# ``normlab_tails`` is written with ATen's Vectorized types, whose width is set at compile time:
# it is built for the CPU capability torch itself dispatches to (ATEN_CPU_CAPABILITY), as ATen's
# own kernels are, and without one (DEFAULT) its loops run lane by lane.
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}
_VECTORISED = ("normlab_tails",)

_enabled = os.environ.get("NORMLAB_COMPILED", "1") != "0"
_modules: dict[str, ModuleType] = {}
_failures: dict[str, str] = {}


def set_compiled_kernels(enabled: bool) -> bool:
    """Use normlab's C++ kernels where they apply (default) or always the eager implementation;
    return the previous setting."""
    global _enabled
    previous, _enabled = _enabled, check_bool("enabled", enabled)
    return previous


def _flags(extension: str) -> list[str]:
    """Compiler flags of ``extension``: :data:`_FLAGS`, and the CPU capability's for
    :data:`_VECTORISED` ones."""
    if extension not in _VECTORISED:
        return list(_FLAGS)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in _CAPABILITY_FLAGS:
        return list(_FLAGS)
    defines = [f"-DCPU_CAPABILITY_{capability}", f"-DCPU_CAPABILITY={capability}"]
    return [*_FLAGS, *_CAPABILITY_FLAGS[capability], *defines]


def build_directory(extension: str = "normlab_kernels") -> Path:
    """Where an extension is built: one directory per source, flags (with them the CPU
    capability), torch and Python version."""
    source = EXTENSIONS[extension]
    flags = " ".join(_flags(extension)).encode()
    digest = hashlib.sha256(source.read_bytes() + flags).hexdigest()[:12]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    root = Path(os.environ.get("NORMLAB_CACHE", Path.home() / ".cache" / "normlab"))
    prefix = "kernels" if extension == "normlab_kernels" else extension.removeprefix("normlab_")
    return root / f"{prefix}-torch{torch.__version__}-{python}-{digest}"


def kernels(extension: str = "normlab_kernels") -> ModuleType | None:
    """The compiled extension, or None when kernels are turned off or it cannot be built."""
    if not _enabled or extension in _failures:
        return None
    if extension not in _modules:
        try:
            _modules[extension] = _build(extension)
        except Exception as error:  # no compiler, no ninja, a failed build: fall back, loudly
            last_line = (str(error).strip().splitlines() or [""])[-1]
            _failures[extension] = f"{type(error).__name__}: {last_line}"
            warnings.warn(
                f"normlab could not build its C++ kernels {extension} "
                f"({_failures[extension]}); it runs the eager implementation instead (same "
                f"results, slower). Set NORMLAB_COMPILED=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
    return _modules[extension]


def _build(extension: str) -> ModuleType:
    from torch.utils import cpp_extension

    directory = build_directory(extension)
    if not any(directory.glob("*.so")):
        print(
            f"normlab: compiling its C++ kernels into {directory} (first use only, about 30 s)",
            file=sys.stderr,
        )
    directory.mkdir(parents=True, exist_ok=True)
    with _ninja_on_path():
        return cpp_extension.load(
            name=extension,
            sources=[str(EXTENSIONS[extension])],
            extra_cflags=_flags(extension),
            build_directory=str(directory),
            verbose=False,
        )


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's builder runs ``ninja`` from PATH; the pip package (a dependency of normlab) puts it
    in the environment's bin, which is not on PATH when that environment is not activated."""
    try:
        import ninja
    except ImportError:
        yield
        return
    previous = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, previous])
    try:
        yield
    finally:
        os.environ["PATH"] = previous
