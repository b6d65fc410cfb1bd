"""A graph pass for the fast step: linear layers that read the same tensor become one.

Each self-attention layer projects its input three times (query, key and value: three
``nn.Linear`` of the transformers model). ``FuseSharedInputLinears`` rewrites the compiled step's
graph, before autograd, so that the three run as one linear layer over the concatenated weights
(``torch.cat`` of the three parameters inside the graph) whose output is split back into three.
The parameters, the model and its exported files stay those of transformers' ELECTRA; only the
step's kernels change: per layer one GEMM instead of three forward, and two instead of six
backward (the input's gradient comes out of one GEMM already summed), for one small copy of the
weights. For ``small``'s narrow layers (64 and 256 wide) the GEMMs are short and many.

Inductor's own ``batch_linear_lhs`` fusion does this for 2-D inputs only; the model's are
(batch, sequence, hidden). The pass is applied through ``torch._inductor.config.pre_grad_custom_pass``
(``FastStep(fuse_linears=True)``), and ``uuid`` keys Inductor's cache to this file's text.
"""

from __future__ import annotations

import hashlib
import operator
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

_LINEAR = (torch._C._nn.linear, torch.nn.functional.linear)


def _arg(node: torch.fx.Node, i: int, name: str) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name)


def _meta(node: Any) -> tuple[tuple[int, ...], torch.dtype] | None:
    """(shape, dtype) of the tensor a node stands for, when Dynamo recorded it."""
    value = node.meta.get("example_value") if isinstance(node, torch.fx.Node) else None
    return (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else None


class FuseSharedInputLinears(CustomGraphPass):
    """Fuses the linear calls of a graph that share their input tensor (see the module's docstring).

    Fused: groups of ≥ 2 calls on the same input node (hence of one input width) with 2-D weights
    of one dtype, all with a bias or all without, whose weights and biases exist before the group's first call.
    ``fused`` counts the groups fused in all the graphs the pass has run on (not those that
    Inductor's caches served: the pass does not run for them)."""

    def __init__(self) -> None:
        self.fused = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        order = {n: i for i, n in enumerate(graph.nodes)}
        groups: dict[tuple[torch.fx.Node, bool], list[torch.fx.Node]] = {}
        for n in graph.nodes:
            if n.op != "call_function" or n.target not in _LINEAR:
                continue
            x, w, b = _arg(n, 0, "input"), _arg(n, 1, "weight"), _arg(n, 2, "bias")
            if (
                isinstance(x, torch.fx.Node)
                and isinstance(w, torch.fx.Node)
                and (b is None or isinstance(b, torch.fx.Node))
            ):
                groups.setdefault((x, b is None), []).append(n)
        for (x, no_bias), calls in groups.items():
            weights = [_arg(n, 1, "weight") for n in calls]
            biases = [] if no_bias else [_arg(n, 2, "bias") for n in calls]
            metas = [_meta(w) for w in weights]
            if len(calls) < 2 or any(m is None or len(m[0]) != 2 for m in metas):
                continue
            if len({m[1] for m in metas}) != 1:  # type: ignore[index]
                continue  # weights of several dtypes
            first = min(calls, key=order.__getitem__)
            if any(order[p] >= order[first] for p in weights + biases):
                continue
            with graph.inserting_before(first):
                w = graph.call_function(torch.cat, (weights,), {"dim": 0})
                b = graph.call_function(torch.cat, (biases,), {"dim": 0}) if biases else None
                y = graph.call_function(torch._C._nn.linear, (x, w, b))
                outs = [m[0][0] for m in metas]  # type: ignore[index]
                parts = graph.call_function(torch.split, (y, outs), {"dim": -1})
                for i, n in enumerate(calls):
                    part = graph.call_function(operator.getitem, (parts, i))
                    n.replace_all_uses_with(part)
            for n in calls:
                graph.erase_node(n)
            self.fused += 1

    def uuid(self) -> Any:
        with open(__file__, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
