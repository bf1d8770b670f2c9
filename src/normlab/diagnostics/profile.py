r"""The power decomposition of every normalization step of a model, in depth order.

PN paper, Eq. 5 and Figure 2: for each probed layer, the per-channel P, P1 = E_x[μ_{x,c}]²,
P2 = Var_x[μ_{x,c}], P3 = E_x[σ_{x,c}]², P4 = Var_x[σ_{x,c}] over the inputs x of ``data``,
streamed with one :class:`~normlab.diagnostics.PowerAccumulator` (memory O(C)) per layer.
"""

from __future__ import annotations

from torch import Tensor, nn

from .power import PowerAccumulator, PowerDecomposition
from .probes import Data, Mode, Selector, Where, check_where, observed_tensor, resolve, stream
from .statistics import NonFiniteStatisticsError

LayerPower = tuple[str, PowerDecomposition]


def power_profile(
    model: nn.Module,
    data: Data,
    where: Where = "norm",
    select: Selector | None = None,
    mode: Mode = None,
) -> list[LayerPower]:
    """(layer name, :class:`PowerDecomposition`) for every probed layer, in execution order.

    Args:
        model: any ``nn.Module``; run under ``torch.no_grad``.
        data: a tensor (one batch), an iterable of batches or ``(x, y)`` tuples, a DataLoader.
        where: ``"norm"`` (default) decomposes the output of every normalization step (normlab
            Normalization modules, a NormAct's ``.norm``: ỹ, and torch's BatchNorm, GroupNorm,
            LayerNorm, InstanceNorm); ``"pre"`` the input ỹ of every activation step;
            ``"post"`` its output z.
        select: modules to probe instead (a type, tuple of types, fnmatch name pattern,
            sequence of names or predicate); ``where`` then only says input ("pre") or output.
        mode: ``None`` leaves the model's train/eval mode alone (BN in train mode normalizes
            with batch statistics, and updates its running statistics); ``"train"``/``"eval"``
            set it for the run and restore it afterwards.

    A module called several times per forward pools all its calls in one decomposition.
    """
    check_where(where)
    accumulators: dict[str, PowerAccumulator] = {}

    def observe(name: str, x: Tensor | None, output: Tensor) -> None:
        y = observed_tensor(where, x, output, name)
        try:
            accumulators.setdefault(name, PowerAccumulator()).update(y)
        except NonFiniteStatisticsError:  # the hook names layer and batch
            raise
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None

    modules = resolve(model, where, select)
    order, _ = stream(model, data, modules, observe, mode, where == "pre", "statistics")
    profile = [(name, accumulators[name].result()) for name in order]
    for name, decomposition in profile:
        if decomposition.count < 2:
            raise ValueError(
                f"layer {name!r} saw {decomposition.count} input: P2 and P4 are variances over "
                f"inputs, so the power decomposition needs a probe batch of at least 2 inputs"
            )
    return profile
