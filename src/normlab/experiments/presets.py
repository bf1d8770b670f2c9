"""The papers' own grids, as presets of ``normlab sweep --preset NAME --data SPEC``.

They are meant for machines with GPUs; on this project's 2-core CPU the reproductions in
``docs/results/`` use smaller grids of the same shape.
"""

from __future__ import annotations

from typing import Any

from .._checks import unknown

# Beyond BatchNorm (Lubana et al. 2021), CIFAR-100 training protocol: 60 epochs, batch 256,
# lr 0.1·B/256, ×0.1 at 75% and 90% of training, weight decay 1e-4; ten normalizers.
BEYOND_BN_NORMALIZERS = [
    "bn", "ln", "in", "gn8", "vn", "frn", "evo-b0", "evo-s0", "gn8+ws", "none+wn",
]  # fmt: skip
# Proxy Normalization (Labatie et al. 2021), ResNet-50 on ImageNet-like folder data.
PN_NORMALIZERS = ["bn", "ln", "ln+pn", "gn32", "gn32+pn", "gn32+ws", "gn32+ws+pn"]

PRESETS: dict[str, dict[str, Any]] = {
    "beyond-bn-cifar100": {
        "base": {
            "model": "resnet56_post",
            "epochs": 60,
            "batch_size": 256,
            "schedule": "step",
            "milestones": [0.75, 0.9],
            "decay": 0.1,
            "weight_decay": 1e-4,
        },
        "grid": {"norm": BEYOND_BN_NORMALIZERS, "seed": [0, 1, 2]},
    },
    "pn-imagenet-resnet50": {
        "base": {
            "model": "resnet50",
            "epochs": 100,
            "batch_size": 256,
            "schedule": "cosine",
            "warmup": 5,
            "weight_decay": 5e-5,
            "workers": 8,
        },
        "grid": {"norm": PN_NORMALIZERS, "regularization": ["none", "extra"], "seed": [0]},
    },
}


def preset(name: str, data: str | None) -> dict[str, Any]:
    """The grid of preset ``name`` on the data spec ``data`` (required)."""
    if name not in PRESETS:
        raise unknown("preset", name, PRESETS)
    if not data:
        raise ValueError(f"--preset {name} needs --data (e.g. cifar100:DIR or folder:DIR)")
    grid = PRESETS[name]
    return {"base": {**grid["base"], "data": data}, "grid": dict(grid["grid"])}
