"""normlab's C++ kernels: where they are built, when they are used, and the loud fallback."""

from __future__ import annotations

import warnings

import pytest
import torch

from normlab import scheme
from normlab.layers import compiled


def node(layer, x: torch.Tensor) -> str:
    return layer(x).grad_fn.name()


def test_build_directory_names_source_torch_and_python(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    directory = compiled.build_directory()
    assert directory.parent == tmp_path
    assert f"torch{torch.__version__}" in directory.name
    assert directory.name.rsplit("-", 1)[1].isalnum()
    assert compiled.build_directory("normlab_statistics") != directory
    changed = tmp_path / "changed.cpp"
    changed.write_text("// another source")
    monkeypatch.setitem(compiled.EXTENSIONS, "normlab_kernels", changed)
    assert compiled.build_directory() != directory


def test_training_on_cpu_uses_the_cpp_node_by_default():
    if compiled.kernels() is None:
        pytest.skip("normlab's C++ kernels could not be built here")
    layer = scheme("gn4+pn").norm_act(8)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    assert "CppNode" in node(layer, x)
    # channels-last runs native GroupNorm and the C++ step node; other strided inputs, which the
    # kernels do not take, the Python node
    last = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert "ProxyNormStep" in node(layer, last)
    strided = x.detach().transpose(2, 3).requires_grad_()
    assert node(layer, strided) == "GroupNormThresholdPNBackward"
    assert compiled.set_compiled_kernels(False) is True  # returns the previous setting
    try:
        assert node(layer, x) == "GroupNormThresholdPNBackward"
    finally:
        compiled.set_compiled_kernels(True)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken_build(extension):
        raise RuntimeError("line one\nno C++ compiler found")

    monkeypatch.setattr(compiled, "_modules", {})
    monkeypatch.setattr(compiled, "_failures", {})
    monkeypatch.setattr(compiled, "_enabled", True)
    monkeypatch.setattr(compiled, "_build", broken_build)
    message = (
        r"could not build its C\+\+ kernels normlab_kernels "
        r"\(RuntimeError: no C\+\+ compiler found\)"
    )
    with pytest.warns(RuntimeWarning, match=message):
        assert compiled.kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is quiet
        assert compiled.kernels() is None
    layer = scheme("gn4+pn").norm_act(8)
    assert node(layer, torch.randn(2, 8, 3, 3, requires_grad=True)) == (
        "GroupNormThresholdPNBackward"
    )
