"""Folding each eval-mode BatchNorm into the convolution that feeds it (``fold_batchnorm``).

In eval mode a BatchNorm is a fixed per-channel scale and shift, so it can be baked into the
weights and bias of a convolution whose output only it reads, as TensorRT and ONNX Runtime do
by default. That saves one pass over every activation. Measured on this project's 2-core
machine (two threads of one core each, in-process): resnet18 with ``channels_last`` ran 46.9
img/s, 48.2 folded (+3%); served at 32 clients over five runs, -6% to +6% (noise) on resnet18
and +2% to +29% on the demo U-Net. Answers change by float rounding only (about 1e-6 on resnet18's logits).

The pairs are found in the graph ``torch.fx`` traces, so a model whose forward branches on
its data cannot be folded; that is an error naming the model, never a silent fallback.
"""

from __future__ import annotations

from collections import Counter

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_BATCHNORM_OF: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}


class NotTraceable(ValueError):
    """``torch.fx`` could not trace the model's forward."""


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` (in eval mode) with every convolution -> BatchNorm pair folded into one
    convolution; ``module`` itself, untouched, when it has no such pair."""
    try:
        traced = fx.symbolic_trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, or whatever forward raises on a Proxy
        raise NotTraceable(f"torch.fx cannot trace its forward ({type(exc).__name__}: {exc})") from exc
    modules = dict(traced.named_modules())
    calls = Counter(str(node.target) for node in traced.graph.nodes if node.op == "call_module")
    folded = 0
    for node in list(traced.graph.nodes):
        conv_node = _conv_feeding(node, modules, calls)
        if conv_node is None:
            continue
        fused = fuse_conv_bn_eval(modules[conv_node.target], modules[node.target])
        _set_submodule(traced, str(conv_node.target), fused)
        node.replace_all_uses_with(conv_node)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return module
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def _conv_feeding(node: fx.Node, modules: dict[str, nn.Module], calls: Counter[str]) -> fx.Node | None:
    """The convolution node ``node`` (a BatchNorm) can be folded into, if any: a convolution
    called once in the whole graph (shared weights cannot take one BatchNorm's scale), whose
    output nothing else reads, into a BatchNorm that normalises by running statistics."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    conv_node = node.args[0]
    if not isinstance(conv_node, fx.Node) or conv_node.op != "call_module" or len(conv_node.users) != 1:
        return None
    conv, norm = modules[str(conv_node.target)], modules[str(node.target)]
    expected = _BATCHNORM_OF.get(type(conv))
    if expected is None or type(norm) is not expected or calls[str(conv_node.target)] != 1:
        return None
    return conv_node if norm.track_running_stats and norm.running_mean is not None else None


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
