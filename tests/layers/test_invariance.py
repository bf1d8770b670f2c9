"""Scale invariance: a normalizer after a bias-free conv makes the network's output invariant to
the scale of the conv's weights, norm(conv(x; k·W)) = norm(conv(x; W)) for k > 0, because
conv(x; k·W) = k·conv(x; W) and every normalizer divides by a statistic that scales with k (up
to ε, which the tests make negligible). A weight-standardized conv is itself invariant, so any
layer after it is.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from normlab.layers import (
    BatchNorm,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    VarianceNorm,
    WSConv2d,
)

EPS = 1e-14  # ε/(k²·var) stays below 1e-8 for k >= 1e-2 and unit-scale weights
SCALES = st.floats(1e-2, 1e2)
GEOMETRY = st.tuples(
    st.integers(2, 4),  # N
    st.integers(1, 3),  # in channels
    st.sampled_from([2, 4, 6]),  # out channels
    st.integers(3, 6),  # H = W
    st.sampled_from([1, 3]),  # kernel
)

# normalizers whose statistic scales with their input (invariant after a plain conv)
SCALE_INVARIANT = {
    "BatchNorm-train": lambda C: BatchNorm(C, eps=EPS),
    "BatchNorm-ghost": lambda C: BatchNorm(C, eps=EPS, norm_batch_size=2),
    "LayerNorm": lambda C: LayerNorm(C, eps=EPS),
    "GroupNorm": lambda C: GroupNorm(C, num_groups=2, eps=EPS),
    "InstanceNorm": lambda C: InstanceNorm(C, eps=EPS),
    "VarianceNorm": lambda C: VarianceNorm(C, eps=EPS),
    "FilterResponseNorm": lambda C: FilterResponseNorm(C, eps=EPS),
    "EvoNormB0": lambda C: EvoNormB0(C, eps=EPS),
}
# ... and all of these after a WS conv, including eval-mode BN and S0's x·sigmoid(v·x)
ANY_NORM = {
    **SCALE_INVARIANT,
    "BatchNorm-eval": lambda C: BatchNorm(C).eval(),
    "EvoNormS0": lambda C: EvoNormS0(C, num_groups=2),
}


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random values for every parameter (affine weights kept positive, away from 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            values = torch.rand(p.shape, generator=g, dtype=p.dtype)
            p.copy_(values + 0.5 if name.endswith(("weight", "v")) else values - 0.5)
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=g))
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5)
    return module


def run_scaled(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor, k: float):
    """norm(conv(x)) with a unit-scale random conv weight W, then with k·W."""
    with torch.no_grad():
        conv.weight.normal_()
    y = norm(conv(x))
    with torch.no_grad():
        conv.weight.mul_(k)
    return y, norm(conv(x))


@pytest.mark.parametrize("name", list(SCALE_INVARIANT))
@settings(max_examples=6, deadline=None)
@given(k=SCALES, geometry=GEOMETRY, seed=st.integers(0, 2**16))
def test_conv_then_norm_is_invariant_to_weight_scale(name, k, geometry, seed):
    N, cin, cout, size, kernel = geometry
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False).double()
    norm = randomize(SCALE_INVARIANT[name](cout), seed).double()
    x = torch.randn(N, cin, size, size, dtype=torch.float64)
    y, y_scaled = run_scaled(conv, norm, x, k)
    torch.testing.assert_close(y_scaled, y, rtol=1e-6, atol=1e-8)


def test_scale_invariance_needs_the_normalizer():
    """Control: without a scale-normalizing layer (S0's x·sigmoid(v·x), or eval-mode BN with
    fixed statistics) the output does change with the conv's scale."""
    torch.manual_seed(0)
    for norm in (EvoNormS0(4, num_groups=2), BatchNorm(4).eval()):
        conv = nn.Conv2d(3, 4, 3, bias=False).double()
        y, y_scaled = run_scaled(
            conv, randomize(norm, 1).double(), torch.randn(2, 3, 5, 5).double(), 3.0
        )
        assert not torch.allclose(y, y_scaled, rtol=1e-3)


@pytest.mark.parametrize("name", list(ANY_NORM))
@settings(max_examples=5, deadline=None)
@given(k=SCALES, geometry=GEOMETRY, seed=st.integers(0, 2**16))
def test_ws_conv_then_any_norm_is_invariant(name, k, geometry, seed):
    N, cin, cout, size, kernel = geometry
    torch.manual_seed(seed)
    # bias kept: WS is invariant by itself
    conv = WSConv2d(cin, cout, kernel, padding=kernel // 2, eps=EPS).double()
    # ε breaks the invariance by ~ε/(k²·var) of each filter's weights: exclude the rare draws
    # (fan-in 2, two nearly equal weights) where that is not negligible; a zero variance (fan-in
    # 1) leaves a zero filter, which is invariant
    var = conv.weight.detach().flatten(1).var(1, correction=0)
    assume(bool(((var == 0) | (EPS / (min(k, 1.0) ** 2 * var) < 1e-10)).all()))
    norm = randomize(ANY_NORM[name](cout), seed).double()
    x = torch.randn(N, cin, size, size, dtype=torch.float64)
    y, y_scaled = run_scaled(conv, norm, x, k)
    torch.testing.assert_close(y_scaled, y, rtol=1e-6, atol=1e-8)
