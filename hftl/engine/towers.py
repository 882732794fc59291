"""Dual encoders (CLIP, VisionTextDualEncoder): a freeze plan and layer-wise lrs per tower.

Each tower is planned like a single encoder: `text_strategy`/`vision_strategy`,
`text_unfrozen_groups`/`vision_unfrozen_groups`, `text_learning_rate`/`vision_learning_rate` and
`text_layer_decay`/`vision_layer_decay`, each falling back to the recipe's `strategy`,
`unfrozen_groups`, `learning_rate` and `layer_decay`. A tower's head (final norm and projection)
trains at `head_lr`, as a task head does. `logit_scale` trains at `learning_rate`, without weight
decay. `freeze` patterns apply on top, over both towers (e.g. `^logit_scale$` to fix the temperature).
"""

from __future__ import annotations

from hftl.config import RunConfig
from hftl.engine.freeze import FreezePlan
from hftl.engine.layers import LOGIT_SCALE, LayerGroup
from hftl.engine.optim import group_lrs

TOWER_NAMES = ("text", "vision")


def setting(config: RunConfig, tower: str, key: str):
    """The tower's own value of `key`, or the recipe-wide one."""
    own = getattr(config.transfer, f"{tower}_{key}", None)
    if own is not None:
        return own
    if key == "learning_rate":
        return config.training.learning_rate
    return getattr(config.transfer, key)


def apply_plan(config: RunConfig, groups: list[LayerGroup]) -> tuple[dict[str, bool], dict[str, float]]:
    """Set requires_grad per tower plan; return ({parameter: trains}, {group: lr})."""
    state: dict[str, bool] = {}
    lrs: dict[str, float] = {}
    for tower in TOWER_NAMES:
        mine = [g for g in groups if g.tower == tower]
        strategy, unfrozen = setting(config, tower, "strategy"), setting(config, tower, "unfrozen_groups")
        own = getattr(config.transfer, f"{tower}_unfrozen_groups", None) is not None
        key = f"{tower}_unfrozen_groups" if own else "unfrozen_groups"
        plan = FreezePlan(strategy, unfrozen, key=key, scope=f"the {tower} tower")
        state.update(plan.apply(mine))
        lrs.update(group_lrs(mine, setting(config, tower, "learning_rate"), setting(config, tower, "layer_decay"),
                             config.transfer.head_lr))
    for group in groups:
        if group.name == LOGIT_SCALE:
            for name, param in group.params:
                param.requires_grad_(True)
                state[name] = True
            lrs[group.name] = config.training.learning_rate
    frozen = FreezePlan("full", patterns=tuple(config.transfer.freeze)).frozen_by_pattern(groups)
    for group in groups:
        for name, param in group.params:
            if name in frozen:
                param.requires_grad_(False)
                state[name] = False
    return state, lrs
