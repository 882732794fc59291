"""`TransferPlan`: layer groups, freeze state and explicit layer-wise lrs for one model, as a value.

This is hftl's engine for a training script of your own: build the plan from a model (any family
hftl knows, or any `nn.Module` with a `groups=` rule), apply its freeze state, and hand its
param groups to any torch optimizer. The lrs are baked into each group's `lr`, so every
scheduler (the Trainer's LambdaLR, OneCycle, your own) scales them as planned; frozen parameters
are in the optimizer too, so a later phase unfreezes them without a new optimizer (DDP/FSDP-safe).
`hftl train` builds its plan through the same class.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from hftl.engine.freeze import STRATEGIES, FreezePlan, set_frozen_eval
from hftl.engine.layers import HEAD, LayerGroup, is_dual_encoder, layer_groups
from hftl.engine.optim import Assignment, assign, clean_name, group_lrs, param_groups
from hftl.engine.plan import PlanRow, chart, plan_rows, text_table
from hftl.engine.towers import TOWER_NAMES, TowerPlan, tower_state
from hftl.errors import HftlError

GroupRule = Mapping[str, "str | Sequence[str]"] | Callable[[str], "str | None"]


@dataclass
class TransferPlan:
    """Which layer groups train and at which lr, for the parameters of one model.

    `trains` is per parameter (a `freeze` pattern or a pre-training-only rule can freeze one inside a
    group that trains), `lrs` per group; `assignment` maps each parameter to its optimizer group."""

    groups: list[LayerGroup]
    trains: dict[str, bool]  # parameter name -> trains
    lrs: dict[str, float]  # group name -> lr
    weight_decay: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)  # the model the plan was built from
    rule: GroupRule | None = field(default=None, repr=False)  # a user's `groups=` rule, kept for adapters
    assignment: dict[str, Assignment] = field(init=False)

    def __post_init__(self) -> None:
        self.assignment = assign(self.groups, self.lrs, self.weight_decay)

    # ---------------------------------------------------------------- building

    @classmethod
    def build(cls, model: nn.Module, strategy: str = "full", unfrozen_groups: int = 2, learning_rate: float = 5e-5,
              layer_decay: float = 0.9, head_lr: float | None = None, weight_decay: float = 0.0,
              freeze: Sequence[str] = (), groups: GroupRule | None = None,
              towers: Mapping[str, TowerPlan] | None = None) -> TransferPlan:
        """The plan for `model`; nothing is changed until `apply`.

        strategy: `feature_extraction` (head only), `partial` (top `unfrozen_groups` backbone groups and
        the head), `full`, or `lora` (backbone frozen; add adapters with peft after `apply`).
        learning_rate is the top backbone group's lr; each group below gets `layer_decay` times the one
        above; the head gets `head_lr` (default `learning_rate`). `freeze`: regexes over parameter names
        frozen on top of the strategy. `groups`: your rule for a model hftl cannot group itself, a mapping
        {group name: regex or regexes} from the input side to the head (name the last one `head`), or a
        callable from parameter name to group name. `towers`: per-tower plans for a dual encoder. The
        defaults are the recipe keys' (and TrainingArguments' learning_rate)."""
        check_values(strategy, learning_rate, layer_decay, head_lr)
        found = rule_groups(model, groups) if groups is not None else _known_groups(model)
        if towers is not None or is_dual_encoder(model) and groups is None:
            plans = towers or {t: TowerPlan(strategy, unfrozen_groups, learning_rate, layer_decay) for t in TOWER_NAMES}
            trains, lrs = tower_state(found, plans, head_lr, learning_rate, tuple(freeze))
        else:
            trains = FreezePlan(strategy, unfrozen_groups, tuple(freeze)).state(found)
            lrs = group_lrs(found, learning_rate, layer_decay, head_lr)
        return cls(found, trains, lrs, weight_decay, model, groups)

    def with_adapters(self, peft_model: nn.Module) -> TransferPlan:
        """The plan for `peft_model` (this plan's model with LoRA adapters from peft): each adapter lands in its
        block's group and trains at that group's lr; what trains is what peft left trainable."""
        base = peft_model.get_base_model()
        groups = rule_groups(base, self.rule) if self.rule is not None else layer_groups(base)
        trains = {n: p.requires_grad for g in groups for n, p in g.params}
        return TransferPlan(groups, trains, self.lrs, self.weight_decay, peft_model, self.rule)

    # ---------------------------------------------------------------- using

    def apply(self, model: nn.Module | None = None, eval_frozen: bool = True) -> nn.Module:
        """Set `requires_grad` by the plan (idempotent) and keep frozen BatchNorm layers in eval mode (their
        running statistics stay the pre-trained ones); with `eval_frozen`, every fully frozen module too (no
        dropout in frozen features)."""
        model = self._model(model)
        by_name = {clean_name(n): p for n, p in model.named_parameters()}
        for name, trains in self.trains.items():
            by_name[name].requires_grad_(trains)
        if not any(self.trains.values()):
            raise HftlError("The freeze plan leaves nothing to train: check `freeze` patterns (they are regexes searched "
                            "in parameter names) and the strategy.")
        set_frozen_eval(model, eval_frozen)
        return model

    def param_groups(self, model: nn.Module | None = None) -> list[dict]:
        """Plain optimizer groups ({params, lr, weight_decay, name}): every parameter exactly once, frozen ones
        too, the lr explicit, no weight decay for biases, norms and position/token embeddings."""
        return param_groups(self._model(model), self.assignment)

    def optimizer(self, optimizer_class, model: nn.Module | None = None, **kwargs):
        """`optimizer_class(self.param_groups(model), **kwargs)`; the groups' lrs win over an `lr` given here."""
        return optimizer_class(self.param_groups(model), **kwargs)

    @property
    def rows(self) -> list[PlanRow]:
        return plan_rows(self.groups, self.assignment, self.trains)

    def table(self) -> str:
        """The plan as `hftl plan` prints it: parameters, state, lr and weight decay per group."""
        return text_table(self.rows)

    def chart(self, path: str | Path, title: str = "layer-group plan") -> Path:
        """lr per group on a log scale, frozen groups hatched, as a PNG."""
        chart(self.rows, Path(path), title)
        return Path(path)

    # ---------------------------------------------------------------- checks

    def _model(self, model: nn.Module | None) -> nn.Module:
        """The plan's own model, or another one with exactly the same parameter names (a copy, a wrapper)."""
        if model is None:
            if self.model is None:
                raise HftlError("This plan was built from groups, not from a model: pass the model.")
            return self.model
        names = {clean_name(n) for n, _ in model.named_parameters()}
        mine = set(self.trains)
        if names != mine:
            missing, extra = sorted(mine - names), sorted(names - mine)
            raise HftlError(
                f"This plan was built for another model: {len(missing)} of its parameters are not in "
                f"`{type(model).__name__}` ({', '.join(missing[:3]) or 'none'}) and {len(extra)} of the model's are not "
                f"in the plan ({', '.join(extra[:3]) or 'none'}). Build the plan from this model."
            )
        return model


def check_values(strategy: str, learning_rate: float, layer_decay: float, head_lr: float | None) -> None:
    """The plan's numbers and names, checked before anything is built from them."""
    if strategy not in STRATEGIES:
        near = difflib.get_close_matches(str(strategy), STRATEGIES, n=1)
        hint = f" Did you mean `{near[0]}`?" if near else ""
        raise HftlError(f"Unknown strategy `{strategy}`.{hint} Choose one of: {', '.join(STRATEGIES)}.")
    if layer_decay <= 0:
        raise HftlError(f"layer_decay must be > 0 (got {layer_decay}); 1.0 means no decay.")
    for name, value in (("learning_rate", learning_rate), ("head_lr", head_lr)):
        if value is not None and value < 0:
            raise HftlError(f"{name} must be >= 0 (got {value}): a negative lr climbs the loss.")


def _known_groups(model: nn.Module) -> list[LayerGroup]:
    try:
        return layer_groups(model)
    except HftlError as err:
        top = [name for name, _ in model.named_children()]
        example = ", ".join(f'"{n}": r"^{n}\\."' for n in top[:2]) + (f', ..., "head": r"^{top[-1]}\\."' if top else "")
        raise HftlError(
            f"{err} For any other model, pass your own rule: TransferPlan.build(model, groups={{{example}}}), "
            f"a regex per group over parameter names from the input side to the head (its top-level modules: "
            f"{', '.join(top[:8])}{' ...' if len(top) > 8 else ''}), or a callable from parameter name to group."
        ) from None


def rule_groups(model: nn.Module, rule: GroupRule) -> list[LayerGroup]:
    """Layer groups from a user's rule: {group: regex or regexes} in input-to-head order, or a callable
    from parameter name to group name (order: first appearance). Every parameter in exactly one group."""
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    if callable(rule):
        owner = {n: rule(n) for n in names}
        order = list(dict.fromkeys(g for g in owner.values() if g is not None))
        twice: dict[str, list[str]] = {}
    else:
        compiled = {}
        for group, patterns in rule.items():
            patterns = [patterns] if isinstance(patterns, str) else list(patterns)
            try:
                compiled[group] = [re.compile(p) for p in patterns]
            except re.error as err:
                raise HftlError(f"groups rule `{group}`: {patterns} is not a valid regular expression ({err}).") from None
        hits = {n: [g for g, regexes in compiled.items() if any(r.search(n) for r in regexes)] for n in names}
        twice = {n: gs for n, gs in hits.items() if len(gs) > 1}
        owner = {n: gs[0] if len(gs) == 1 else None for n, gs in hits.items()}
        order = list(rule)
    if twice:
        shown = "; ".join(f"{n} ({', '.join(g)})" for n, g in list(twice.items())[:5])
        raise HftlError(f"The groups rule assigns {len(twice)} parameter(s) to more than one group: {shown}. Make the "
                        "patterns exclusive (anchor them, e.g. `^layer4\\.`).")
    unassigned = [n for n in names if owner[n] is None]
    if unassigned:
        raise HftlError(f"The groups rule leaves {len(unassigned)} parameter(s) in no group: "
                        f"{', '.join(unassigned[:5])}{' ...' if len(unassigned) > 5 else ''}. Add patterns for them.")
    groups = [LayerGroup(g, [(n, params[n]) for n in names if owner[n] == g]) for g in order]
    groups = [g for g in groups if g.params]
    if not groups or not groups[-1].is_head:
        raise HftlError(f"The groups rule must end with the task head, named `{HEAD}` (got "
                        f"{', '.join(g.name for g in groups) or 'no groups'}): the head trains at head_lr in every strategy.")
    return groups
