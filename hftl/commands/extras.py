"""The optional parts of a training run, each with a half before the fit and a half after it.

- `ForgettingReport` (`source_eval`): k-NN accuracy of the encoder's embeddings on source data.
- `ZeroShotReport` (tasks with zero-shot metrics): the task's zero-shot scores before and after.
- `FeatureCache` (a frozen backbone): the backbone runs once; the head trains on its outputs (a disk cache
  is removed after the fit: it is no result, and it would be pushed with the run folder).
- `ReplayHead` (`replay_data`): the source head leaves the model before it is saved.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import default_data_collator

from hftl.commands.outline import Extra, Inputs, Run
from hftl.engine.features import BackboneSwap, CacheSpec, cached_splits, should_cache

if TYPE_CHECKING:
    from hftl.config import RunConfig
    from hftl.tasks.base import Task


class ForgettingReport(Extra):
    def before(self, run: Run, inputs: Inputs) -> None:
        from hftl.forgetting.report import knn_accuracy

        self.score = knn_accuracy(run.model, run.loaded.processor, run.config)

    def after(self, run: Run, inputs: Inputs, metrics: dict) -> None:
        from hftl.forgetting.report import knn_accuracy

        after = knn_accuracy(run.model, run.loaded.processor, run.config)
        metrics.update(source_knn_accuracy_before=self.score, source_knn_accuracy_after=after,
                       source_forgetting=self.score - after)


class ZeroShotReport(Extra):
    def before(self, run: Run, inputs: Inputs) -> None:
        self.scores = run.task.zero_shot_metrics(run.config, run.loaded, inputs.datasets)

    def after(self, run: Run, inputs: Inputs, metrics: dict) -> None:
        if not self.scores:
            return
        now = run.task.zero_shot_metrics(run.config, run.loaded, inputs.datasets)
        metrics.update({f"{k}_before": v for k, v in self.scores.items()})
        metrics.update({f"{k}_after": v for k, v in now.items()})


class FeatureCache(Extra):
    """Cached features when only the head trains; the whole model is back before anything reads it."""

    def before(self, run: Run, inputs: Inputs) -> None:
        config, task = run.config, run.task
        args = config.training
        self.original = (inputs.datasets, inputs.collator)
        swap = BackboneSwap.of(run.model)
        if "input_ids" in inputs.datasets["train"].column_names:
            inputs.lengths = [len(ids) for ids in inputs.datasets["train"]["input_ids"]]  # batches grouped as uncached
        disk = f"{args.output_dir}/feature_cache/rank{args.process_index}" if config.transfer.cache_features == "disk" else None
        self.disk = disk
        spec = CacheSpec(args.per_device_eval_batch_size, args.device, task.cache_input, task.cache_tokens(run.model), disk)
        inputs.datasets = cached_splits(run.model, inputs.datasets, inputs.collator, spec)
        swap.detach()
        inputs.collator, inputs.swap = default_data_collator, swap

    def after(self, run: Run, inputs: Inputs, metrics: dict) -> None:
        inputs.swap.attach()  # from here on (reports, save, push) the model is whole
        inputs.datasets, inputs.collator = self.original
        inputs.swap, inputs.lengths = None, None
        if self.disk:  # a cache, not a result: it would be pushed to the Hub with the run folder
            shutil.rmtree(self.disk, ignore_errors=True)
            with contextlib.suppress(OSError):
                Path(self.disk).parent.rmdir()  # the last rank out removes the empty feature_cache folder


class ReplayHead(Extra):
    def after(self, run: Run, inputs: Inputs, metrics: dict) -> None:
        inner = run.model.get_base_model() if hasattr(run.model, "get_base_model") else run.model
        run.replay.detach(inner)  # the saved folder is the target model alone


def cache_wanted(config: RunConfig, task: Task, groups, model=None) -> bool:
    """Whether to cache features; a refused explicit request (`memory`, `disk`) is bad input, raised here."""
    blockers = []
    if not config.transfer.eval_frozen:
        blockers.append("eval_frozen is false, so the frozen backbone would apply dropout")
    blockers += task.cache_blockers(config, model)
    if config.model.from_scratch:
        blockers.append("from_scratch")
    return should_cache(config.transfer.cache_features, groups, blockers, model)


def extras_for(config: RunConfig, run: Run) -> list[Extra]:
    """The extras this recipe asks for, in `before` order (their `after` halves run in reverse)."""
    extras: list[Extra] = []
    if run.replay is not None:
        extras.append(ReplayHead())
    if config.transfer.source_eval:
        extras.append(ForgettingReport())
    if run.task.capabilities.zero_shot:
        extras.append(ZeroShotReport())
    if cache_wanted(config, run.task, run.groups, run.model):
        extras.append(FeatureCache())
    return extras
