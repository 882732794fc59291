"""Freeze plans: which layer groups train.

A plan is computed from the groups alone and applied by setting `requires_grad` on every
parameter, so applying it twice gives the same state (idempotent) and the result never depends
on what an earlier plan did. Frozen parameters need no gradient, so autograd skips the backward
pass below the lowest trainable group. Frozen modules run in eval mode (`set_frozen_eval`): always
for BatchNorm, so frozen stages keep their pre-trained running statistics; for the rest with `eval_frozen`.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass

import torch
from torch import nn

from hftl.engine.layers import LayerGroup, backbone_size
from hftl.engine.optim import clean_name
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


def keeps_statistics(module: nn.Module) -> bool:
    """BatchNorm and any other layer that tracks running statistics (a `running_mean` buffer) in train mode."""
    return isinstance(getattr(module, "running_mean", None), torch.Tensor)


def set_frozen_eval(model: nn.Module, enabled: bool = True, frozen: set[str] | None = None) -> list[str]:
    """Keep frozen modules in eval mode; return the modules pinned.

    One rule, applied wherever a freeze state is applied (a plan, each phase): a BatchNorm layer
    whose parameters are all frozen is always pinned, so its running mean and variance stay the
    pre-trained ones (in train mode every forward would overwrite them with this data's batch
    statistics, although nothing can train to match; EfficientNet's momentum of 0.99 replaces
    them almost whole at every step). With `enabled` (`eval_frozen`), every fully frozen module is
    pinned too: a frozen block cannot adapt to dropout noise, so dropping units there only perturbs
    the features the trainable layers see; in eval mode frozen features are deterministic (and
    cacheable) and attention takes the fused kernel, about twice as fast on CPU.

    The pin is a per-instance `train` override, so the Trainer's and DDP's `model.train()` respect
    it, and it is undone first, so re-applying after a plan change unpins groups that now train
    (back to the mode the model is in). `frozen` names the parameters to treat as frozen (a phase's
    inactive groups); default: no grad. A BatchNorm without parameters follows its enclosing module.
    """
    for module in model.modules():
        if "train" in module.__dict__:
            del module.train
            module.train(model.training)
    is_frozen = (lambda n, p: n in frozen) if frozen is not None else (lambda n, p: not p.requires_grad)
    pinned: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in pinned):
            continue
        params = list(module.named_parameters(prefix=name))
        if not (name and params and all(is_frozen(clean_name(n), p) for n, p in params)):
            continue
        if enabled or keeps_statistics(module):
            module.train = types.MethodType(_eval_only_train, module)
            module.train(model.training)
            pinned.append(name)
    return pinned
