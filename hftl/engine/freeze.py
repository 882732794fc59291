"""Freeze plans: which layer groups train.

A plan is computed from the groups alone and applied by setting `requires_grad` on every
parameter, so applying it twice gives the same state (idempotent) and the result never depends
on what an earlier plan did. Frozen parameters need no gradient, so autograd skips the backward
pass below the lowest trainable group.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass

from torch import nn

from hftl.engine.layers import LayerGroup, backbone_size
from hftl.engine.strategies import STRATEGIES  # noqa: F401  (spelled there, without torch; imported from here too)
from hftl.errors import HftlError

# Parameters only pre-training uses (DINOv2/ViT-MAE's mask token): never trained, whatever the plan, so
# no gradient is ever expected for them (DDP without find_unused_parameters would wait for one).
PRETRAINING_ONLY = ("mask_token",)


def pretraining_only(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in PRETRAINING_ONLY




@dataclass(frozen=True)
class FreezePlan:
    strategy: str  # one of STRATEGIES
    unfrozen_groups: int = 0  # partial: top backbone groups that train
    patterns: tuple[str, ...] = ()  # extra regexes (re.search) over parameter names to freeze
    key: str = "unfrozen_groups"  # the recipe key that set unfrozen_groups, named when it is out of range
    scope: str = "this model"  # what the groups belong to (a dual encoder's tower)

    def group_trains(self, groups: list[LayerGroup]) -> dict[str, bool]:
        n = backbone_size(groups)
        if self.strategy == "partial" and not 0 <= self.unfrozen_groups <= n:
            raise HftlError(
                f"{self.key}={self.unfrozen_groups} is out of range: {self.scope} has {n} backbone groups "
                f"({', '.join(g.name for g in groups if not g.is_head)}). Use a value from 0 (head only) to {n} "
                "(everything)."
            )
        trains = {}
        for index, group in enumerate(groups):
            if group.is_head or self.strategy == "full":
                trains[group.name] = True
            elif self.strategy == "partial":
                trains[group.name] = index >= n - self.unfrozen_groups
            else:
                trains[group.name] = False
        return trains

    def frozen_by_pattern(self, groups: list[LayerGroup]) -> set[str]:
        names = [name for g in groups for name, _ in g.params]
        frozen: set[str] = set()
        for pattern in self.patterns:
            try:
                regex = re.compile(pattern)
            except re.error as err:
                raise HftlError(f"freeze pattern `{pattern}` is not a valid regular expression: {err}.") from None
            hits = {n for n in names if regex.search(n)}
            if not hits:
                examples = ", ".join(names[:3] + names[-2:])
                raise HftlError(
                    f"freeze pattern `{pattern}` matches no parameter. Patterns are regexes searched in "
                    f"parameter names such as: {examples}. The plan's groups (`hftl plan`) tell which part is which."
                )
            frozen |= hits
        return frozen

    def state(self, groups: list[LayerGroup]) -> dict[str, bool]:
        """{parameter name: trains}, from the groups alone; nothing is changed."""
        trains = self.group_trains(groups)
        frozen = self.frozen_by_pattern(groups)
        return {name: trains[group.name] and name not in frozen and not pretraining_only(name)
                for group in groups for name, _ in group.params}

    def apply(self, groups: list[LayerGroup]) -> dict[str, bool]:
        """Set requires_grad on every parameter; return {parameter name: trains}."""
        state = self.state(groups)
        for group in groups:
            for name, param in group.params:
                param.requires_grad_(state[name])
        return state


def _eval_only_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """`train()` for a frozen module: it and its children stay in eval mode whatever is asked."""
    return nn.Module.train(self, False)


def set_frozen_eval(model: nn.Module, enabled: bool = True, frozen: set[str] | None = None) -> list[str]:
    """Keep every fully frozen module in eval mode (no dropout); return the modules pinned.

    A frozen block cannot adapt to dropout noise, so dropping units there only perturbs the
    features the trainable layers see; in eval mode frozen features are deterministic (and
    cacheable) and attention takes the fused kernel, about twice as fast on CPU. The pin is a
    per-instance `train` override, so the Trainer's and DDP's `model.train()` respect it, and it
    is undone first, so re-applying after a plan change unpins groups that now train. `frozen`
    names the parameters to treat as frozen (a phase's inactive groups); default: no grad.
    """
    for module in model.modules():
        if "train" in module.__dict__:
            del module.train
    pinned: list[str] = []
    if not enabled:
        return pinned
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in pinned):
            continue
        params = list(module.named_parameters(prefix=name))
        is_frozen = (lambda n, p: n in frozen) if frozen is not None else (lambda n, p: not p.requires_grad)
        if name and params and all(is_frozen(n, p) for n, p in params):
            module.train = types.MethodType(_eval_only_train, module)
            module.train(model.training)
            pinned.append(name)
    return pinned
