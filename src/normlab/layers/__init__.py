"""normlab's layers: normalizers, weight-space convolutions, activation steps and Proxy Norm."""

from .act import Act, ActivationStep, GainedAct, Plan
from .activations import (
    Activation,
    activation_names,
    get_activation,
    register_activation,
)
from .base import Normalization
from .batch_norm import BatchDependentNorm, BatchNorm, VarianceNorm
from .evonorm import EvoNormB0, EvoNormS0
from .frn import TLU, FilterResponseNorm
from .group_norm import GroupNorm, InstanceNorm, LayerNorm
from .norm_act import NormAct
from .proxy_moments import PUBLISHED_GAINS, activation_gain, proxy_moments
from .proxy_norm import ProxyNormAct
from .sync_batch_norm import SyncBatchNorm
from .weight_space import CWNConv2d, ScaledWSConv2d, WeightSpaceConv2d, WNConv2d, WSConv2d

__all__ = [
    "PUBLISHED_GAINS",
    "TLU",
    "Act",
    "Activation",
    "ActivationStep",
    "BatchDependentNorm",
    "BatchNorm",
    "CWNConv2d",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNorm",
    "GainedAct",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "NormAct",
    "Normalization",
    "Plan",
    "ProxyNormAct",
    "ScaledWSConv2d",
    "SyncBatchNorm",
    "VarianceNorm",
    "WNConv2d",
    "WSConv2d",
    "WeightSpaceConv2d",
    "activation_gain",
    "activation_names",
    "get_activation",
    "proxy_moments",
    "register_activation",
]
