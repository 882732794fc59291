"""The shape every `hftl train` run has, whatever it fits: a `Run` (what was built), its `Inputs`,
the `Mode` that fits and saves, and the optional `Extra`s around the fit.

    preflight -> mode.build -> inputs -> run files -> extras.before -> mode.fit -> extras.after -> mode.save
        -> finished -> mode.publish

A mode is the Trainer (commands/train.py) or a task's own evaluation (commands/clip_eval.py); an
extra is a feature with a half before the fit and a half after it (commands/extras.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from datasets import DatasetDict

    from hftl.config import RunConfig
    from hftl.engine.layers import LayerGroup
    from hftl.engine.optim import Assignment
    from hftl.engine.phases import Phase
    from hftl.engine.plan import PlanRow
    from hftl.tasks.base import Loaded, Task


@dataclass
class Run:
    """Data, model and plan of one run, with every input check done; nothing written yet."""

    config: RunConfig
    task: Task
    raw: DatasetDict
    loaded: Loaded
    resume: str | None = None  # the checkpoint folder this run continues
    command: str = ""  # the command that reproduces it, for the model card (tokens redacted)
    plan: Any = None  # engine.transfer.TransferPlan: groups, freeze state, lrs; None for a run that trains nothing
    phase_control: Any = None  # engine.phases.Phases: the phase schedule and the callback that follows it
    extras: list[Extra] = field(default_factory=list)
    regularizer: Any = None  # forgetting.penalties L2SP/EWC (or their Sum): added to the task loss
    replay: Any = None  # forgetting.replay.Replay: a source-task loss added to the task loss
    report: dict | None = None  # per-class precision/recall/F1 (and confusion matrix) on `report_split`
    report_split: str | None = None
    pictures: list[str] = field(default_factory=list)  # files beside the model that the card shows

    # derived from the plan and the phases, never stored twice
    @property
    def groups(self) -> list[LayerGroup]:
        return self.plan.groups if self.plan is not None else []

    @property
    def assignment(self) -> dict[str, Assignment]:
        return self.plan.assignment if self.plan is not None else {}

    @property
    def rows(self) -> list[PlanRow]:
        """The plan table: empty for a run that trains nothing."""
        return self.plan.rows if self.plan is not None else []

    @property
    def phases(self) -> list[Phase]:
        return self.phase_control.schedule if self.phase_control is not None else []

    @property
    def model(self):
        return self.loaded.model

    @property
    def processor(self):
        return self.loaded.processor

    @property
    def labels(self):
        return self.loaded.labels

    @property
    def main_process(self) -> bool:
        return self.config.training.process_index == 0


@dataclass
class Inputs:
    """What the fit reads; an extra may replace it for the fit (cached features) and restore it after."""

    datasets: DatasetDict
    collator: Callable
    lengths: list[int] | None = None  # token counts of the examples behind cached features (length grouping)
    swap: Any = None  # engine.features.BackboneSwap while the head trains on cached features


class Extra:
    """An optional part of a run. `before` runs in list order ahead of the fit, `after` in reverse order
    behind it (like nested context managers), adding its figures to the metrics."""

    def before(self, run: Run, inputs: Inputs) -> None:
        pass

    def after(self, run: Run, inputs: Inputs, metrics: dict) -> None:
        pass


class Mode:
    """How a run is built, fitted and saved."""

    def build(self, config: RunConfig, task: Task, resume: str | None) -> Run:
        raise NotImplementedError

    def fit(self, run: Run, inputs: Inputs, callbacks: list) -> dict:
        raise NotImplementedError

    def metric_names(self, run: Run) -> list[str] | None:
        """Metrics `metric_for_best_model` may name (without `eval_`); None: the mode keeps no best model."""
        return [run.task.best_metric(run.labels), "loss", *run.task.metric_names(run.labels)]

    def save(self, run: Run, metrics: dict) -> None:
        raise NotImplementedError

    def publish(self, run: Run) -> None:
        """After the run's folder is finished: an upload (push_to_hub); a mode that pushes nothing does nothing."""
