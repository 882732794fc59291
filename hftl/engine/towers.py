"""Dual encoders (CLIP, VisionTextDualEncoder, SigLIP): a freeze plan and layer-wise lrs per tower.

Each tower is planned like a single encoder, from its own `TowerPlan` (strategy, unfrozen
groups, the lr of its top block, layer_decay). A tower's head (final norm and projection;
SigLIP's attention-pooling head) trains at `head_lr`, as a task head does. `logit_scale` (with
SigLIP's `logit_bias`) trains at its own lr, without weight decay.
`freeze` patterns apply on top, over both towers (e.g. `^logit_scale$` to fix the temperature).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hftl.engine.freeze import FreezePlan
from hftl.engine.layers import LOGIT_GROUPS, LayerGroup
from hftl.engine.optim import group_lrs
from hftl.engine.strategies import TOWER_STRATEGIES  # noqa: F401  (adapters are planned for one tower only)

TOWER_NAMES = ("text", "vision")


@dataclass(frozen=True)
class TowerPlan:
    """One tower's plan, as a single encoder's: its strategy, how many top groups a partial plan trains,
    the lr of its top block and the decay per group below it."""

    strategy: str  # one of TOWER_STRATEGIES
    unfrozen_groups: int
    learning_rate: float  # the tower's top block
    layer_decay: float
    key: str = "unfrozen_groups"  # the recipe key that set unfrozen_groups, named when it is out of range


def tower_state(groups: list[LayerGroup], plans: Mapping[str, TowerPlan], head_lr: float | None,
                logit_scale_lr: float, freeze: tuple[str, ...] = ()) -> tuple[dict[str, bool], dict[str, float]]:
    """({parameter: trains}, {group: lr}) of the per-tower plans; nothing is changed."""
    state: dict[str, bool] = {}
    lrs: dict[str, float] = {}
    for tower, plan in plans.items():
        mine = [g for g in groups if g.tower == tower]
        state.update(FreezePlan(plan.strategy, plan.unfrozen_groups, key=plan.key, scope=f"the {tower} tower").state(mine))
        lrs.update(group_lrs(mine, plan.learning_rate, plan.layer_decay, head_lr))
    for group in groups:
        if group.name in LOGIT_GROUPS:  # temperature (and SigLIP's bias) train without weight decay unless frozen
            state.update({name: True for name, _ in group.params})
            lrs[group.name] = logit_scale_lr
    frozen = FreezePlan("full", patterns=tuple(freeze)).frozen_by_pattern(groups)
    return {name: trains and name not in frozen for name, trains in state.items()}, lrs


def apply_tower_plans(groups: list[LayerGroup], plans: Mapping[str, TowerPlan], head_lr: float | None,
                      logit_scale_lr: float, freeze: tuple[str, ...] = ()) -> tuple[dict[str, bool], dict[str, float]]:
    """Set requires_grad per tower plan; return ({parameter: trains}, {group: lr})."""
    state, lrs = tower_state(groups, plans, head_lr, logit_scale_lr, freeze)
    for group in groups:
        for name, param in group.params:
            param.requires_grad_(state[name])
    return state, lrs
