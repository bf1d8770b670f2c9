"""Training: the configuration, the loop, checkpoints, distributed helpers and regularizers.

from normlab.training import TrainConfig, train
summary = train(TrainConfig(model="resnet20", norm="gn8+pn", data="fashion-mnist:DIR"))
"""

from .config import ConfigError, TrainConfig, from_dict, load_yaml
from .loop import METRIC_KEYS, build_model, train
from .optim import param_groups

__all__ = [
    "METRIC_KEYS",
    "ConfigError",
    "TrainConfig",
    "build_model",
    "from_dict",
    "load_yaml",
    "param_groups",
    "train",
]
