"""Per-layer-group learning rates in the experiment trackers (`report_to: tensorboard`, trackio, wandb, ...).

The Trainer logs one `learning_rate`: its first optimizer group's, which under hftl's plan is the
embeddings' (the lowest). `GroupRates` adds one series per layer group, `lr/<group>` (TensorBoard shows
them as `train/lr/<group>`), so a dashboard shows the layer-wise decay and, with phases, each group's
unfreezing. A group that does not train at that step (frozen by the plan, or waiting for its phase) logs
0: its lr is still in the optimizer, but it moves nothing.

The Trainer hands each log dict to its callbacks in list order: the reporting integrations come right
after its flow callback, then the user's callbacks and the console printer. `track_group_rates` puts
`GroupRates` just before the first integration and a callback that takes the series out again just after
the last, so the trackers get them and the console line stays as short as before.
"""

from __future__ import annotations

from transformers import TrainerCallback

PREFIX = "lr/"


class GroupRates(TrainerCallback):
    """Adds `lr/<layer group>` to every training log, from the optimizer's param groups and their `name`."""

    def __init__(self, phases=None):
        self.phases = phases  # engine.phases.Phases, or None when the run has a single phase
        self.last: dict[str, float] = {}

    def _waiting(self) -> set[str]:
        if self.phases is None or self.phases.current < 0:
            return set()
        active = set(self.phases.schedule[self.phases.current].groups)
        return {g.name for g in self.phases.groups} - active

    def rates(self, optimizer) -> dict[str, float]:
        """{`lr/<group>`: current lr, 0 where the group does not train}; `layer.5/no_decay` is layer.5's."""
        waiting, out = self._waiting(), {}
        for group in optimizer.param_groups:
            name = str(group.get("name") or "").split("/")[0]
            if not name:
                continue
            trains = name not in waiting and any(p.requires_grad for p in group["params"])
            key = PREFIX + name
            out[key] = max(out.get(key, 0.0), float(group["lr"]) if trains else 0.0)
        return out

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        """The lrs this step used: read before the scheduler moves them, as the Trainer's `learning_rate` is."""
        if optimizer is not None:
            self.last = self.rates(optimizer)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "learning_rate" in logs:  # a training-step log
            logs.update(self.last)


class _OffTheConsole(TrainerCallback):
    """Takes the `lr/` series out of the log dict once the integrations have them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in [k for k in logs or {} if k.startswith(PREFIX)]:
            del logs[key]


def track_group_rates(trainer, phases=None) -> GroupRates | None:
    """Log per-group lrs to the trainer's reporting integrations; None (nothing added) when it reports to none.

    Works with any `transformers.Trainer` whose optimizer groups carry a `name` (hftl's param groups do)."""
    from transformers.integrations import get_reporting_integration_callbacks

    reporters = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
    callbacks = trainer.callback_handler.callbacks
    at = [i for i, callback in enumerate(callbacks) if reporters and isinstance(callback, reporters)]
    if not at:
        return None
    rates = GroupRates(phases)
    callbacks.insert(at[-1] + 1, _OffTheConsole())
    callbacks.insert(at[0], rates)
    return rates
