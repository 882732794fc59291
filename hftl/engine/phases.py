"""Training phases: LP-FT (head first) and gradual unfreezing (one group at a time, top down).

A phase is a span of training with one set of active layer groups. The recipe's freeze plan is
the last phase; earlier phases are subsets of it. Every parameter that trains in any phase has
`requires_grad=True` from step 0, so DDP/FSDP register it and all-reduce its gradient on every
step; a group that is not active yet has its (synchronised) gradient dropped before clipping and
the optimizer step, so AdamW does not move it, and its modules stay in eval mode; its optimizer
state is primed at train begin to what its first step would create (zeros), so checkpoints hold
state for every parameter that requires grad, as FSDP2's state dicts demand. Tensors are looked
up by name on each phase change: FSDP2's `fully_shard` replaces them after the plan is built. The
phase is a pure function of the epoch, so a resumed run is in the same phase as the run it
continues, with the optimizer state it saved (no rebuild, ever).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import TrainerCallback

from hftl.engine.freeze import set_frozen_eval
from hftl.engine.layers import LayerGroup
from hftl.engine.optim import clean_name, prime_state

if TYPE_CHECKING:
    from hftl.engine.transfer import TransferPlan
from hftl.errors import HftlError

PLAN_FILE = "hftl_plan.json"


@dataclass(frozen=True)
class Phase:
    start_epoch: float
    groups: tuple[str, ...]  # active layer groups


def schedule(groups: list[LayerGroup], trains: dict[str, bool], head_warmup_epochs: float, unfreeze_every: float) -> list[Phase]:
    """Phases from the final plan `trains`: head only first, then all at once (LP-FT) or top down."""
    final = tuple(g.name for g in groups if trains[g.name])
    if not head_warmup_epochs and not unfreeze_every:
        return [Phase(0.0, final)]
    head = tuple(g.name for g in groups if g.is_head)
    backbone = [g.name for g in groups if not g.is_head and trains[g.name]]
    if not backbone:
        raise HftlError(
            "Phases need backbone groups to unfreeze, but the plan trains only the head. Use strategy partial or full "
            "with head_warmup_epochs or unfreeze_every."
        )
    phases = [Phase(0.0, head)]
    if not unfreeze_every:
        return phases + [Phase(float(head_warmup_epochs), final)]
    start = float(head_warmup_epochs or unfreeze_every)
    for k in range(1, len(backbone) + 1):
        active = set(head) | set(backbone[-k:])
        phases.append(Phase(start + (k - 1) * unfreeze_every, tuple(g.name for g in groups if g.name in active)))
    return phases


def phase_at(phases: list[Phase], epoch: float) -> int:
    index = 0
    for i, phase in enumerate(phases):
        if epoch + 1e-9 >= phase.start_epoch:
            index = i
    return index


def describe(phases: list[Phase]) -> list[str]:
    lines = []
    for i, phase in enumerate(phases):
        new = [g for g in phase.groups if i == 0 or g not in phases[i - 1].groups]
        lines.append(f"phase {i} from epoch {phase.start_epoch:g}: {'+' if i else ''}{', '.join(new)}")
    return lines


class Phases(TrainerCallback):
    """LP-FT and gradual unfreezing over a `TransferPlan`, for any training loop.

    As a `transformers.TrainerCallback` (any Trainer subclass) it follows the epoch by itself; in a
    loop of your own call `on_epoch(epoch)` at each epoch start and `drop_inactive_grads()` after the
    backward, before clipping and the optimizer step. Every parameter that trains in any phase has
    `requires_grad=True` from step 0 (DDP and FSDP register it; the optimizer holds it); a group that
    waits has its gradient zeroed as it arrives (so clipping and the all-reduce see nothing of it)
    and dropped before the step (so AdamW neither moves nor decays it). Under FSDP2 build the optimizer
    after `fully_shard` and call `prime(optimizer)` once before the first step (the Trainer callback
    primes at train begin)."""

    def __init__(self, plan: TransferPlan, head_warmup_epochs: float = 0, unfreeze_every: float = 0,
                 eval_frozen: bool = True):
        self.plan, self.eval_frozen = plan, eval_frozen
        self.model, self.groups = plan.model, plan.groups
        self.schedule = schedule(self.groups, _group_trains(plan), head_warmup_epochs, unfreeze_every)
        self.current = -1
        self.next_start = 0.0  # epoch at which the phase can change next: the per-step check is one compare
        self.inactive: list[nn.Parameter] = []
        self.history: list[dict] = []  # {epoch, phase, groups, new}: each phase as it was entered
        self._waiting: set[int] = set()
        self._hooks: list = []
        self._hooked: set[int] = set()  # ids of the tensors the hooks sit on

    def _current(self) -> dict[str, nn.Parameter]:
        """The model's parameters as they are now, by the plan's names. FSDP2's `fully_shard` replaces every
        parameter with a sharded one (a DTensor) after the plan was built, so the tensors to drop and to hook
        are looked up on each phase change, never kept from the plan."""
        return {clean_name(n): p for n, p in self.model.named_parameters()}

    def _hook(self, params: dict[str, nn.Parameter]) -> None:
        """Zero-as-it-arrives hooks on the trainable tensors the model holds now (again if they were swapped).
        Under FSDP2 autograd never reaches the sharded tensors, so these do not fire there: the sharded
        gradient is reduced, then dropped by `drop_inactive_grads` before clipping and the step."""
        trainable = [p for n, p in params.items() if self.plan.trains.get(n)]
        if len(self.schedule) < 2 or {id(p) for p in trainable} == self._hooked:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = [p.register_hook(self._zero_if_waiting(p)) for p in trainable]
        self._hooked = {id(p) for p in trainable}

    def _zero_if_waiting(self, param: nn.Parameter):
        key = id(param)
        return lambda grad: torch.zeros_like(grad) if key in self._waiting else None

    def enter(self, index: int, epoch: float = 0.0) -> None:
        if index == self.current:
            return
        active = set(self.schedule[index].groups)
        waiting = [n for g in self.groups if g.name not in active for n, _ in g.params]
        inactive_names = set(waiting)
        params = self._current()
        self._hook(params)
        self.inactive = [params[n] for n in waiting if self.plan.trains[n]]
        self._waiting = {id(p) for p in self.inactive}
        set_frozen_eval(self.model, self.eval_frozen, frozen=inactive_names | {n for n, t in self.plan.trains.items() if not t})
        if self.current >= 0 or index > 0:
            print(f"hftl: {describe(self.schedule)[index]}", flush=True)
        previous = set(self.schedule[self.current].groups) if self.current >= 0 else set()
        self.history.append({"epoch": float(epoch), "phase": index, "groups": list(self.schedule[index].groups),
                             "new": [g for g in self.schedule[index].groups if g not in previous]})
        self.current = index
        self.next_start = self.schedule[index + 1].start_epoch if index + 1 < len(self.schedule) else float("inf")

    def on_epoch(self, epoch: float) -> None:
        """Enter the phase of `epoch` (fractions allowed), if it is not the current one."""
        if self.current < 0 or epoch + 1e-9 >= self.next_start:
            self.enter(phase_at(self.schedule, epoch), epoch)

    def drop_inactive_grads(self) -> None:
        """Drop the gradients of groups that wait: call it after the backward, before clipping and the step."""
        for param in self.inactive:
            param.grad = None

    def prime(self, optimizer) -> int:
        """Optimizer state for the groups that wait, as their first step would create it (engine/optim.py
        `prime_state`): a checkpoint taken mid-phase then loads under FSDP2 too. Call it once, after building the
        optimizer and before the first step; the Trainer callback does it at train begin."""
        return prime_state(optimizer, {id(p) for p in self._current().values()})

    def close(self) -> None:
        """Remove the gradient hooks (training is over; the model is plain again)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._waiting, self._hooked = [], set(), set()

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.on_epoch(state.epoch or 0.0)
        if optimizer is not None:  # after a resume the loaded state is there: nothing is primed twice
            self.prime(optimizer)

    def on_step_begin(self, args, state, control, **kwargs):
        self.on_epoch(state.epoch or 0.0)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.drop_inactive_grads()  # also when max_grad_norm is 0 and no clipping ran

    def on_train_end(self, args, state, control, **kwargs):
        self.close()


def _group_trains(plan: TransferPlan) -> dict[str, bool]:
    return {g.name: any(plan.trains[n] for n, _ in g.params) for g in plan.groups}


def write_plan_record(folder: str | Path, plan: dict, phases: list[Phase]) -> None:
    """`plan`: the settings that decide the phases (strategy, unfrozen groups, patterns, schedule), as plain values."""
    record = {"plan": plan, "phases": [asdict(p) for p in phases]}
    path = Path(folder, PLAN_FILE)
    partial = path.with_suffix(".json.partial")  # written whole, then renamed: a kill never leaves half a record
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)


def check_resume(checkpoint: str, now: dict) -> None:
    """A checkpoint trained under another freeze plan would resume into a different phase sequence."""
    path = Path(checkpoint, PLAN_FILE)
    if not path.is_file():
        return
    saved = json.loads(path.read_text())["plan"]
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, recipe {now[k]!r}" for k in now if saved.get(k) != now[k]]
    if diffs:
        raise HftlError(
            f"Checkpoint `{checkpoint}` was trained with another freeze plan ({'; '.join(diffs)}). Resume with the "
            "checkpoint's settings, or start a new run in a fresh output_dir."
        )
