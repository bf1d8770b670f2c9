"""Counting activation calls: an activation a conversion drops (or runs twice) shows here even
where the outputs cannot show it (relu(relu(x)) = relu(x))."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from normlab.layers import ActivationStep

# activations as functions and tensor methods (counted where no activation module runs them)
FUNCTIONAL = {"relu", "relu_", "relu6", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid"}
FUNCTIONAL |= {"sigmoid_", "tanh", "tanh_", "elu", "leaky_relu", "mish", "softplus", "hardtanh"}
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid)
ACTIVATION_MODULES += (nn.Sigmoid, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.Mish, nn.PReLU, nn.Hardtanh)
ACTIVATION_MODULES += (ActivationStep,)


class ActivationCalls(TorchFunctionMode):
    """Counts, while active, the calls of activation modules (torch's, normlab's activation
    steps, and ``extra`` classes) and the functional activations run outside such a module."""

    def __init__(self, model: nn.Module, extra: tuple[type[nn.Module], ...] = ()) -> None:
        super().__init__()
        self.calls, self.depth, self.handles = 0, 0, []
        for module in model.modules():
            if isinstance(module, (*ACTIVATION_MODULES, *extra)):
                self.handles.append(module.register_forward_pre_hook(self._enter))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, module, args) -> None:
        self.calls += self.depth == 0
        self.depth += 1

    def _leave(self, module, args, output) -> None:
        self.depth -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and getattr(func, "__name__", "") in FUNCTIONAL:
            self.calls += 1
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for handle in self.handles:
            handle.remove()


def run_counting(
    model: nn.Module, x: torch.Tensor, extra: tuple[type[nn.Module], ...] = ()
) -> tuple[torch.Tensor, int]:
    """The model's output on ``x`` and how many activation calls computed it."""
    counter = ActivationCalls(model, extra)
    with counter:
        out = model(x)
    return out, counter.calls
