"""Input checks shared by every layer: clear errors naming the offending value and the choices."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

_finite_checks = True
_FAKE_MODE = torch._C._TorchDispatchModeKey.FAKE
T = TypeVar("T")


def set_finite_checks(enabled: bool) -> bool:
    """Turn normlab's non-finite value checks on or off; return the old setting.

    Two checks read one boolean back from the device at every forward of a layer:

    * Proxy Normalization checks that its threshold (hence its parameters) is finite;
    * the batch-statistics normalizers (BatchNorm, ghost BatchNorm, SyncBatchNorm,
      VarianceNorm, EvoNorm-B0) check that the statistics of their batch are finite (that is,
      that their input is) before these reach the running statistics, which one NaN or inf
      would poison for good (see :func:`finite_statistics`).

    Both check C-sized tensors: cheap on a CPU; on a GPU each reads a boolean back and so
    synchronises the stream, so a user who has validated a model may turn them off. Tracers
    (torch.compile, torch.export, jit.trace) never run them (see :func:`tracing`).
    """
    global _finite_checks
    previous, _finite_checks = _finite_checks, check_bool("enabled", enabled)
    return previous


def finite_checks_enabled() -> bool:
    """Whether to read back PN's threshold: checks are on and real data flows (see tracing)."""
    return _finite_checks and not tracing()


def tracing() -> bool:
    """Whether a tracer runs this code: torch.compile (Dynamo), torch.export (which also serves
    ONNX export), torch.jit.trace, or any other code running on fake tensors.

    Layers then build their step from standard differentiable ATen ops, which every tracer
    captures and every backend (Inductor, ONNX, TorchScript) runs; eager runs keep the fused
    autograd nodes, in-place tails and caches. Nothing may be read back from a tensor, and no
    tensor made while tracing may be cached: it may be fake."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._get_dispatch_mode(_FAKE_MODE) is not None
    )


def cached(cache: dict, key: Hashable, make: Callable[[], T]) -> T:
    """``cache[key]``, made by ``make()`` on first use; made afresh, and not stored, while
    :func:`tracing` (a tracer's tensors must not outlive its trace)."""
    if tracing():
        return make()
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found


def closest(name: str, choices: Iterable[str], cutoff: float = 0.4) -> str | None:
    """The choice nearest to ``name`` by edit similarity (a ratio of at least ``cutoff``), or
    None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def unknown(kind: str, name: object, choices: Iterable[str]) -> ValueError:
    """A ValueError for an unknown ``kind``, listing the valid choices and the closest one."""
    choices = list(choices)
    message = f"unknown {kind} {name!r}; valid choices: {', '.join(choices)}"
    suggestion = closest(str(name), choices)
    if suggestion is not None:
        message += f". Did you mean {suggestion!r}?"
    return ValueError(message)


# -- arguments ------------------------------------------------------------------------------

EPS_MAX = 1.0
"""The largest ε a layer accepts (see :func:`check_eps`)."""

FLOATING_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)
"""The input dtypes normlab's layers compute in."""

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a string or a bool where a number belongs, ...).

    A TypeError that is also a ValueError (as numpy's AxisError is both a ValueError and an
    IndexError), so that code catching the ValueError of an out-of-range value (the model
    builders, which name the failing layer; user code written against earlier releases) catches
    it too."""


def _kind(value: object) -> str:
    """'a str', 'an int': the type of ``value`` with its article."""
    kind = type(value).__name__
    return f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}"


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number: an int, a float or a numpy scalar, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, checked to be a finite real number in the given interval.

    Raises :class:`ArgumentTypeError` for a non-number (a string, a bool, a tensor, None) and a
    ValueError for NaN, ±inf or a value outside the interval; both messages name the argument,
    the value and the interval, e.g. "eps must be a finite number in (0, 1], got inf"."""
    if low == 0 and low_open and high == math.inf:
        what = "a positive finite number"
    elif low == -math.inf and high == math.inf:
        what = "a finite number"
    else:
        what = f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}"
        what += ")" if high_open or high == math.inf else "]"
    if not is_real(value):
        raise ArgumentTypeError(f"{name} must be {what}, got {value!r} ({_kind(value)})")
    number = float(value)
    inside = (number > low if low_open else number >= low) and (
        number < high if high_open else number <= high
    )
    if not (math.isfinite(number) and inside):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number


def check_eps(value: object, name: str = "eps") -> float:
    """ε, the stabiliser added to a variance (or the floor of a norm): a finite number in
    (0, :data:`EPS_MAX`] = (0, 1].

    Why (0, 1]. ε > 0 keeps a constant channel (variance 0) finite: with ε = 0 it divides by
    zero. The upper bound: every normlab layer adds ε to the variance of a quantity whose
    variance is of order 1 where the layer does its job (BN, GN, LN, IN, VN, FRN, EvoNorm on
    activations; PN on φ(Y) for unit Gaussian Y, where Var is 0.34 for relu; WS on weights
    scaled to unit variance by the fan-in). ε ≥ 1 then outweighs the statistic it stabilises, and
    the layer stops normalizing without any error: ε = 1e30 maps every input to almost exactly
    zero. Published values are 1e-5 (BN, GN), 1e-6 (FRN), 1e-3 (EvoNorm, TensorFlow's BN),
    0.03 (PN), 1e-12 (WN's floor), all far inside the bound; a value above 1 is almost surely a
    mistake (a swapped argument, a learning rate passed as eps)."""
    return check_number(name, value, 0.0, EPS_MAX, low_open=True)


def check_momentum(value: object) -> float | None:
    """BatchNorm's momentum: None (a cumulative average) or a finite number in [0, 1]."""
    if value is None:
        return None
    if not is_real(value):
        raise ArgumentTypeError(
            f"momentum must be None or a finite number in [0, 1], got {value!r} ({_kind(value)})"
        )
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"momentum must be None or a finite number in [0, 1], got {value!r}")
    return float(value)


def check_int(name: str, value: object, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as an int, checked to be an integer (not a bool or a float) ≥ ``minimum``
    (any integer for None) and ≤ ``maximum`` (no bound for None)."""
    if maximum is not None:
        what = f"an integer in [{'-inf' if minimum is None else minimum}, {maximum}]"
    elif minimum is None:
        what = "an integer"
    else:
        words = {0: "a non-negative integer", 1: "a positive integer"}
        what = words.get(minimum, f"an integer >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {what}, got {value!r} ({_kind(value)})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """``value`` checked to be a bool (True or False): a string such as "no" or "false" is
    truthy, so that reading it as a flag would silently switch the option on."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({_kind(value)})")
    return value


def check_str(name: str, value: object, example: str = "") -> str:
    """``value`` checked to be a non-empty string (``example`` shows one)."""
    hint = f", e.g. {example!r}" if example else ""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string{hint}, got {value!r} ({_kind(value)})")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string{hint}, got {value!r}")
    return value


DEVICE_FORMS = "cpu, cuda, cuda:K, mps"


def available_devices() -> list[str]:
    """The device types torch can compute on here: cpu, and cuda and mps where available."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(value: object, name: str = "device") -> torch.device:
    """``value`` (a device name or a :class:`torch.device`) as a device torch can compute on
    here: the CPU, a visible CUDA device, MPS where it is available. An unknown name, a
    device this machine lacks and ``meta`` (tensors without values, which nothing can be
    computed or read from) are ValueErrors naming ``name``, the value and the choices."""
    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, str):
        try:
            device = torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"unknown {name} {value!r}; valid forms: {DEVICE_FORMS} (choices on this "
                f"machine: {', '.join(available_devices())})"
            ) from None
    else:
        raise ArgumentTypeError(
            f"{name} must be a device name ({DEVICE_FORMS}) or a torch.device, got {value!r} "
            f"({_kind(value)})"
        )
    here = available_devices()
    if device.type == "meta":
        raise ValueError(
            f"{name} {value!r} is not available here: meta tensors hold no values, so nothing can "
            f"be computed or measured on them (choices on this machine: {', '.join(here)})"
        )
    if device.type not in here:
        raise ValueError(
            f"{name} {value!r} is not available here (choices on this machine: {', '.join(here)})"
        )
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(
                f"{name} {value!r} is not available here: {count} CUDA device(s) are visible "
                f"(cuda:0 to cuda:{count - 1})"
            )
    return device


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int, checked to be an integer ≥ 1 (a bool or a float is refused)."""
    return check_int(name, value, 1)


def check_sequence(name: str, value: object, item: type = str, example: str = "") -> tuple:
    """``value`` as a tuple, checked to be a sequence (list, tuple, ...) of ``item``.

    A string is refused with a TypeError: iterated, it would be its characters, one name each."""
    what = (
        f"a sequence of {item.__name__} (a list or a tuple{', e.g. ' + example if example else ''})"
    )
    if isinstance(value, str | bytes):
        raise TypeError(
            f"{name} must be {what}, got the string {value!r}, which would be read character by "
            f"character; wrap a single name in a list: {name}=[{value!r}]"
        )
    if not isinstance(value, Sequence):
        raise TypeError(f"{name} must be {what}, got {value!r} ({_kind(value)})")
    bad = [v for v in value if not isinstance(v, item)]
    if bad:
        raise TypeError(f"{name} must be {what}, but it holds {bad[0]!r} ({_kind(bad[0])})")
    return tuple(value)


def check_reals(name: str, values: object) -> list[float]:
    """``values`` as a list of floats, checked to be a sequence (or 1-d array) of real numbers.
    A string, None, a mapping or a sequence holding a non-number is an
    :class:`ArgumentTypeError` naming ``name`` (numpy would say "could not convert string to
    float: 'a'" without naming it). Finiteness is left to the caller."""
    if hasattr(values, "tolist") and not isinstance(values, str | bytes):
        values = values.tolist()  # a numpy array or a tensor
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ArgumentTypeError(
            f"{name} must be a sequence of numbers (a list, a tuple or a 1-d array), got "
            f"{values!r} ({_kind(values)})"
        )
    bad = [v for v in values if not is_real(v)]
    if bad:
        raise ArgumentTypeError(
            f"{name} must be a sequence of numbers, but it holds {bad[0]!r} ({_kind(bad[0])})"
        )
    return [float(v) for v in values]


def check_pair(name: str, value: object, minimum: int) -> tuple[int, int]:
    """A 2-d conv size (kernel_size, stride, padding, dilation): an int or a pair of ints, each
    ≥ ``minimum``."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    items = tuple(value) if isinstance(value, tuple | list) else (value,)
    if len(items) != 2 and isinstance(value, tuple | list):  # (3,) would build a 1-d kernel
        raise ArgumentTypeError(
            f"{name} must be {what} or a pair of them (height, width), got {value!r}"
        )
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise ArgumentTypeError(
                f"{name} must be {what} or a pair of them (height, width), got {value!r} "
                f"(holding {_kind(item)})"
            )
        if item < minimum:
            raise ValueError(
                f"{name} must be {what} or a pair of them (height, width), got {value!r}"
            )
    first, second = (items * 2)[:2]
    return int(first), int(second)


PADDING_STRINGS = ("same", "valid")


def check_conv(
    in_channels: object,
    out_channels: object,
    kernel_size: object,
    stride: object = 1,
    padding: object = 0,
    dilation: object = 1,
    groups: object = 1,
) -> None:
    """The arguments of a 2-d convolution: positive channel counts that ``groups`` divides, a
    positive kernel size, stride and dilation, a non-negative padding (or "same", "valid"). A
    zero or negative size, a float or a bool otherwise builds a broken layer (a weight with no
    entries, or a torch error about a tensor's shape) that fails only later."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("out_channels", out_channels)
    check_pair("kernel_size", kernel_size, 1)
    check_pair("stride", stride, 1)
    check_pair("dilation", dilation, 1)
    if isinstance(padding, str):
        if padding not in PADDING_STRINGS:
            raise unknown("padding", padding, PADDING_STRINGS)
    else:
        check_pair("padding", padding, 0)
    check_positive_int("groups", groups)
    for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        if channels % groups:
            raise ValueError(
                f"groups={groups} does not divide {name}={channels}; choose a number of groups "
                f"that divides both in_channels and out_channels"
            )


# -- inputs ---------------------------------------------------------------------------------


def reference_tensor(module: nn.Module, *given: Tensor | None) -> Tensor | None:
    """The first floating tensor among ``given``, then ``module``'s own parameters, then its
    own buffers: what fixes the dtype a layer computes in (None for a layer holding none)."""
    for t in given:
        if t is not None and t.is_floating_point():
            return t
    for t in (*module._parameters.values(), *module._buffers.values()):
        if t is not None and t.is_floating_point():
            return t
    return None


def check_same_device(layer: str, x: Tensor, reference: Tensor | None) -> None:
    """Check that ``x`` lives on the device of ``reference`` (the layer's parameters): torch
    would otherwise fail deep in a kernel ("Tensor on device cpu is not on the expected device
    meta!") or, for a meta input, on the first value it reads back."""
    if reference is None or x.device == reference.device:
        return
    raise ValueError(
        f"{layer} holds its parameters on {reference.device} but got an input on {x.device} "
        f"(shape {tuple(x.shape)}); move the input (x.to({str(reference.device)!r})) or the "
        f"model (model.to({str(x.device)!r}))"
    )


def check_dtype(
    layer: str, x: Tensor, reference: Tensor | None = None, mixed_precision: bool = True
) -> None:
    """Check that ``x`` is floating point (:data:`FLOATING_DTYPES`) and matches the dtype of
    ``reference`` (the layer's parameters).

    ``mixed_precision`` accepts float16 and bfloat16 inputs to float32 parameters, as torch's
    normalization kernels do (and as mixed-precision training feeds them); under autocast the
    dtypes are left to autocast. Integer and bool inputs would otherwise fail deep in torch
    (or be promoted silently), and complex ones give complex outputs (FRN) or torch errors."""
    check_same_device(layer, x, reference)
    if x.dtype not in FLOATING_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in FLOATING_DTYPES)
        raise TypeError(
            f"{layer} supports floating-point inputs ({names}), got an input of dtype "
            f"{str(x.dtype).removeprefix('torch.')} and shape {tuple(x.shape)}; convert it, "
            f"e.g. with x.float()"
        )
    if reference is None or reference.dtype == x.dtype:
        return
    if mixed_precision and reference.dtype == torch.float32 and x.dtype in _LOW_PRECISION:
        return
    if torch.is_autocast_enabled(x.device.type):
        return
    held, got = (str(d).removeprefix("torch.") for d in (reference.dtype, x.dtype))
    raise TypeError(
        f"{layer} holds {held} parameters but got a {got} input of shape {tuple(x.shape)}; "
        f"convert the input (x.to(torch.{held})) or the layer (layer.to(torch.{got}))"
    )


def check_input(
    layer: str,
    x: Tensor,
    num_channels: int,
    min_dim: int = 2,
    reference: Tensor | None = None,
    mixed_precision: bool = True,
) -> None:
    """Check that ``x`` is a floating tensor of shape (N, C, *spatial) with
    ``C == num_channels`` (and the dtype of ``reference``, see :func:`check_dtype`).

    An input whose first dim is C but whose second is not (or that lacks a dim) looks like one
    sample without its batch dim, (C, H, W): the error says so and how to add it."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    unbatched = x.dim() >= 1 and x.shape[0] == num_channels
    if x.dim() < min_dim:
        layout = "(N, C)" if min_dim == 2 else "(N, C, *spatial) with at least one spatial dim"
        hint = (
            f"; it looks unbatched (its first dim is C = {num_channels}): add a batch dimension "
            f"with x.unsqueeze(0)"
        )
        raise ValueError(
            f"{layer} expects an input of shape {layout}, got a {x.dim()}-d tensor "
            f"of shape {tuple(x.shape)}" + (hint if unbatched else "")
        )
    if x.shape[1] != num_channels:
        if unbatched:
            raise ValueError(
                f"{layer} got an input that looks unbatched: expected (N, C, ...) with "
                f"C = {num_channels}, got shape {tuple(x.shape)}, whose first dim is C; add a "
                f"batch dimension with x.unsqueeze(0)"
            )
        raise ValueError(
            f"{layer} was built for {num_channels} channels but got an input with "
            f"{x.shape[1]} channels (shape {tuple(x.shape)})"
        )
    check_dtype(layer, x, reference, mixed_precision)


def check_model_input(
    model: str, x: object, in_channels: int, reference: Tensor | None = None
) -> None:
    """Check the input of an image model at its entry: a floating tensor of shape (N, C, H, W)
    with ``C == in_channels``, on the device and of the dtype of ``reference`` (the model's
    first parameter).

    Without it, a wrong input reaches the model's first plain torch layer and fails there with
    torch's words ("expected input[2, 1, 8, 8] to have 3 channels"), or worse runs: one image
    without its batch dim, (C, H, W), passes a conv2d as an unbatched input and is then read by
    the normalizations as a batch of C inputs. torch.fx's tracing (convert, fold) is let through.
    """
    if isinstance(x, torch.fx.Proxy):
        return
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{model} expects a torch.Tensor of images (N, C, H, W), got {type(x).__name__}"
        )
    if x.dim() != 4:
        hint = ""
        if x.dim() == 3 and x.shape[0] == in_channels:
            hint = "; it looks like one image without its batch dim: add it with x.unsqueeze(0)"
        raise ValueError(
            f"{model} expects images of shape (N, C, H, W) with C = {in_channels}, got a "
            f"{x.dim()}-d tensor of shape {tuple(x.shape)}{hint}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model} was built for {in_channels} input channels but got images with "
            f"{x.shape[1]} (shape {tuple(x.shape)}); build it with in_channels={x.shape[1]} or "
            f"give {in_channels}-channel images"
        )
    check_dtype(model, x, reference, mixed_precision=False)


def check_conv_input(layer: str, x: object, conv: nn.Conv2d) -> None:
    """Check the input of a 2-d convolution: a tensor (N, C, H, W) (or one unbatched (C, H, W)
    image, as torch's conv2d takes it) with ``C == conv.in_channels`` and each padded spatial
    side at least the dilated kernel; torch's own errors say neither the layer nor the fix."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(
            f"{layer} expects an input of shape (N, C, H, W) with C = {conv.in_channels}, got a "
            f"{x.dim()}-d tensor of shape {tuple(x.shape)}"
        )
    if x.shape[-3] != conv.in_channels:
        raise ValueError(
            f"{layer} was built for {conv.in_channels} input channels but got an input with "
            f"{x.shape[-3]} channels (shape {tuple(x.shape)})"
        )
    if isinstance(conv.padding, str):
        padding = (0, 0) if conv.padding == "valid" else None
    else:
        padding = conv.padding
    if padding is not None:
        for side, size, pad, kernel, dilation in zip(
            ("height", "width"), x.shape[-2:], padding, conv.kernel_size, conv.dilation, strict=True
        ):
            need = dilation * (kernel - 1) + 1
            if size + 2 * pad < need:
                raise ValueError(
                    f"{layer} got an input of shape {tuple(x.shape)} too small for its "
                    f"{conv.kernel_size[0]}x{conv.kernel_size[1]} kernel: its {side} {size} padded "
                    f"by {pad} on each side is below the {need} the kernel spans (dilation "
                    f"{dilation})"
                )


def check_values(
    what: str, t: object, min_dim: int = 1, layout: str = "", finite: bool = True
) -> Tensor:
    """``t`` checked to hold values a statistic can be computed from: a real (floating or
    integer) tensor, not a meta tensor, of at least ``min_dim`` dims (``layout`` names the
    expected shape), non-empty and (unless ``finite=False``, for callers that check their
    results instead: a pass over ``t`` saved) finite. A complex tensor would lose its imaginary
    part to a float64 cast, a NaN would make every statistic NaN without an error, and a meta
    tensor has no values to read."""
    layout = layout or (f"of at least {min_dim} dims" if min_dim > 1 else "")
    if not isinstance(t, Tensor):
        shown = f"a torch.Tensor {layout}".rstrip()
        raise TypeError(f"{what} needs {shown}, got {type(t).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(
            f"{what} needs real values (a floating or integer tensor), got dtype "
            f"{str(t.dtype).removeprefix('torch.')} of shape {tuple(t.shape)}"
        )
    if t.dim() < min_dim:
        raise ValueError(f"{what} needs a tensor {layout}, got shape {tuple(t.shape)}")
    if t.device.type == "meta":
        raise ValueError(
            f"{what} needs values, got a meta tensor of shape {tuple(t.shape)} (shape only)"
        )
    if t.numel() == 0:
        raise ValueError(f"{what} needs values, got an empty tensor of shape {tuple(t.shape)}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise non_finite_values(what, t)
    return t


def non_finite_values(what: str, t: Tensor) -> NonFiniteError:
    """The error for ``t`` holding NaN or inf, counting them (a pass over ``t``)."""
    bad = int((~torch.isfinite(t)).sum())
    return NonFiniteError(
        f"{what} got non-finite values: {bad} of {t.numel()} values are NaN or inf (shape "
        f"{tuple(t.shape)}); every statistic of them would be NaN"
    )


def layer_name(module: nn.Module) -> str:
    """The class of ``module`` and, where :func:`name_modules` recorded it, its qualified name
    in its model: "BatchNorm 'layer1.0.norm_act1.norm'"."""
    name = module.__dict__.get("_normlab_name")
    return type(module).__name__ + (f" {name!r}" if name else "")


def name_modules(model: nn.Module) -> nn.Module:
    """Record in every submodule of ``model`` its qualified name, for errors raised while it
    runs (:func:`layer_name`); return ``model``. ``normlab.models.create`` does this."""
    for name, module in model.named_modules():
        if name:
            module.__dict__["_normlab_name"] = name
    return model


class NonFiniteError(ValueError):
    """A layer met non-finite values it refuses to compute with: a NaN or inf input to a
    batch-statistics normalizer (whose running statistics it would poison), or Proxy
    Normalization parameters whose proxy moments are not finite. Training loops may catch it as
    a sign of divergence."""


def finite_statistics(*stats: Tensor) -> bool:
    """Whether the batch statistics ``stats`` (per-channel means, variances: C-sized tensors)
    are all finite; True while :func:`finite_checks_enabled` is off.

    Batch-statistics normalizers check their statistics before these reach the running
    statistics: a statistic is non-finite exactly when its channel holds a NaN or ±inf value
    (or a finite value large enough to overflow the variance), and one such batch makes the
    running statistics NaN for every later evaluation, silently. Checking the statistics rather
    than the input costs one reduction over 2·C values and one boolean read back per forward,
    not a pass over the activation (see ``benchmarks/finite_check_speed.py``)."""
    if not finite_checks_enabled():
        return True
    flags = [torch.isfinite(t).all() for t in stats]
    return bool(torch.stack(flags).all() if len(flags) > 1 else flags[0])


def non_finite_input(
    layer: str, x: Tensor, processes: str = "", stale: bool = False
) -> NonFiniteError:
    """The error of a batch-statistics normalizer ``layer`` whose statistics of ``x`` are not
    finite, counting the NaN and ±inf values of ``x``. ``processes`` names the processes of a
    synchronised layer whose input is not finite; ``stale`` says that the running statistics
    were non-finite before this batch."""
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    counts = f"{nan} NaN, {inf} inf, in an input of shape {tuple(x.shape)}"
    advice = (
        "Training has likely diverged (lower the learning rate, clip gradients) or the data "
        "holds NaN; normlab.set_finite_checks(False) turns this check off"
    )
    if processes:
        head = (
            f"{layer} got a non-finite input on {processes}; this process's input holds "
            f"{nan + inf} non-finite values of {x.numel()} ({counts})"
        )
    elif nan + inf:
        head = (
            f"{layer} got a non-finite input: {nan + inf} of {x.numel()} values are NaN or inf "
            f"({counts})"
        )
    elif stale:
        return NonFiniteError(
            f"{layer}'s running statistics were already non-finite before this batch (loaded "
            f"or set so, or poisoned while normlab.set_finite_checks(False)); its input of "
            f"shape {tuple(x.shape)} is finite. Reset them with reset_running_stats(), or load "
            f"finite ones"
        )
    else:
        largest = float(x.detach().abs().max()) if x.numel() else 0.0
        head = (
            f"{layer}'s batch statistics overflow {str(x.dtype).removeprefix('torch.')} although "
            f"its input of shape {tuple(x.shape)} is finite (its largest magnitude is "
            f"{largest:.3g})"
        )
    return NonFiniteError(
        f"{head}. Its batch statistics would be NaN and its running statistics poisoned, so it "
        f"stops and leaves them as they were. {advice}"
    )


def check_several_values(layer: str, x: Tensor, count: int, per: str = "group") -> None:
    """Statistics over ``count`` values need more than one of them."""
    if count <= 1:
        raise ValueError(
            f"{layer} needs more than one value per {per} to normalize, but input shape "
            f"{tuple(x.shape)} gives {count}"
        )


def first_order_only(name: str) -> None:
    """Refuse double backward through ``name``'s hand-written backward (whose saved partials are
    constants to autograd): a cheaper stand-in for ``once_differentiable`` on PN's hot path."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{name} supports first-order gradients only (backward with create_graph=True, "
            f"e.g. for double backward, is not implemented)"
        )


def channel_view(t: Tensor, ndim: int) -> Tensor:
    """View a per-channel vector (C,) as (1, C, 1, ..., 1) for an ``ndim``-d activation."""
    return t.view((1, -1) + (1,) * (ndim - 2))


def batch_channel_view(t: Tensor, like: Tensor) -> Tensor:
    """A per-channel vector (C,) broadcast to (N, C, 1, ..., 1) for ``like`` = (N, C, *spatial):
    under Inductor (torch 2.13) a per-channel factor expanded over the batch lets the backward
    reduce its gradient in one loop with the elementwise work around it, where a (1, C, 1, ...)
    view takes a separate pass over the activations."""
    return channel_view(t, like.dim()).expand(like.shape[0], -1, *(1,) * (like.dim() - 2))


def channel_sum(t: Tensor) -> Tensor:
    """Σ over (N, *spatial) for each channel of an (N, C, *spatial) tensor; summing the batch
    first is about twice as fast on CPU as one reduction over the strided dims."""
    return t.sum(0).reshape(t.shape[1], -1).sum(1)
