"""normlab: the normalization layers of deep networks, and the diagnostics that explain them.

Quick use::

    import normlab
    s = normlab.scheme("gn8+pn")                 # GroupNorm(8 groups) + Proxy Normalization
    block = nn.Sequential(s.conv(64, 64, 3), s.norm_act(64))
    mean, var = normlab.proxy_moments("relu", gamma, beta)   # exact proxy moments
    model = normlab.models.create("resnet50", norm="ln+pn")  # a model zoo built from schemes
    model = normlab.convert(torchvision_resnet, norm="gn8+pn")  # BN (+ act) -> the scheme
    deployed = normlab.fold(model)   # eval-mode copy: plain Conv/GroupNorm/φ, PN at no cost
"""

from . import layers, models
from ._checks import NonFiniteError, set_finite_checks
from .convert import convert
from .fold import fold
from .layers import activation_gain, proxy_moments
from .layers.compiled import set_compiled_kernels
from .scheme import Scheme, SchemeForm, scheme, schemes

__version__ = "0.1.0"

__all__ = [
    "NonFiniteError",
    "Scheme",
    "SchemeForm",
    "__version__",
    "activation_gain",
    "convert",
    "fold",
    "layers",
    "models",
    "proxy_moments",
    "scheme",
    "schemes",
    "set_compiled_kernels",
    "set_finite_checks",
]
