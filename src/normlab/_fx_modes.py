r"""One traced graph for both modes of a module.

:mod:`torch.fx` records ``self.training`` as the constant it is when tracing, so a graph traced
in one mode computes the other mode wrongly (a head's ``F.dropout(x, p, training=self.training)``
would drop in evaluation, or never in training). :func:`mode_graph` takes the graphs traced in
training and in evaluation mode and gives one that reads each such flag from the calling module,
or raises :class:`ModeDependentError` where the two differ otherwise (``if self.training:``).
"""

from __future__ import annotations

from typing import Any

from torch import fx


def owner(node: fx.Node) -> str:
    """The path of the module whose forward made ``node`` ("" for the traced root)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack), "") if stack else ""


def mode_graph(train: fx.Graph, evaluation: fx.Graph) -> fx.Graph:
    """One graph for both modes: the evaluation graph, where each argument that is True in the
    training graph and False in it (``F.dropout(x, p, training=self.training)``) reads the
    calling module's ``training`` flag instead. Any other difference (``if self.training:``)
    raises :class:`ModeDependentError`."""
    if len(train.nodes) != len(evaluation.nodes):
        raise ModeDependentError(_MODE_DEPENDENT)
    twin: dict[fx.Node, fx.Node] = {}
    for a, b in zip(train.nodes, evaluation.nodes, strict=True):
        if (a.op, a.target) != (b.op, b.target):
            raise ModeDependentError(_MODE_DEPENDENT)
        twin[a] = b
        args, kwargs = fx.map_arg(a.args, twin.get), fx.map_arg(a.kwargs, twin.get)
        if len(args) != len(b.args) or kwargs.keys() != b.kwargs.keys():
            raise ModeDependentError(_MODE_DEPENDENT)
        if args != b.args:
            b.args = tuple(_mode_flag(x, y, b) for x, y in zip(args, b.args, strict=True))
        if kwargs != b.kwargs:
            b.kwargs = {key: _mode_flag(kwargs[key], y, b) for key, y in b.kwargs.items()}
    return evaluation


def _mode_flag(in_training: Any, in_evaluation: Any, node: fx.Node) -> Any:
    if type(in_training) is type(in_evaluation) and in_training == in_evaluation:
        return in_evaluation
    if in_training is True and in_evaluation is False:
        path = owner(node)
        with node.graph.inserting_before(node):
            return node.graph.get_attr(f"{path}.training" if path else "training")
    raise ModeDependentError(_MODE_DEPENDENT)


_MODE_DEPENDENT = (
    "its forward runs different code in training and in evaluation mode (it reads "
    "self.training), so one traced graph cannot compute both"
)


class ModeDependentError(Exception):
    """The training and the evaluation graphs of a model differ in more than a flag."""


__all__ = ["ModeDependentError", "mode_graph", "owner"]
