"""Replay against forgetting: every training step also learns a batch of a labelled source task.

The source task keeps its own head (a linear layer on the encoder's mean-pooled output), so the
encoder must stay good at it while it learns the target task. Each step adds the source batch's
cross-entropy to the target loss; `replay_ratio` sets the source batch size relative to the
target batch (0.25: one source example per four target examples). The source data goes through
the task's own loading, checks and preprocessing, so its columns must fit the task's recipe keys.

The source head is a submodule of the model while training (DDP synchronises it, the optimizer
and checkpoints hold it, a resumed run continues with it) and is removed before the final save:
the saved folder is the plain target model. The source batches are drawn per rank from a seeded
sampler; a resumed run restarts that stream (the target data resumes exactly).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from hftl.config import RunConfig
from hftl.errors import HftlError
from hftl.regularize import mean_pooled

ATTRIBUTE = "hftl_replay_head"


class Replay:
    def __init__(self, config: RunConfig, task, processor, model: nn.Module):
        t = config.transfer
        source = copy.copy(config)
        source.data = dataclasses.replace(
            config.data, dataset=t.replay_data, train_file=None, validation_file=None, test_file=None,
            class_names=[], max_train_samples=None, max_eval_samples=None, label_separator=None,
        )
        try:
            raw, labels = task.load_data(source)
        except HftlError as err:
            raise HftlError(f"replay_data `{t.replay_data}` does not fit this task's recipe keys: {err}") from None
        if labels.multi_label:
            raise HftlError(f"replay_data `{t.replay_data}` is multi-label; replay needs one label per example.")
        self.labels = labels.names
        self.train = task.encode(source, raw, processor)["train"]
        self.collator = task.collator(processor)
        args = config.training
        self.batch_size = max(1, round(t.replay_ratio * args.per_device_train_batch_size))
        self.seed, self.rank, self.world = args.seed, args.process_index, args.world_size
        hidden = model.config.hidden_size
        generator = torch.Generator().manual_seed(args.seed)
        self.head = nn.Linear(hidden, len(self.labels))
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) * 0.02)
            self.head.bias.zero_()
        self._iterator = None
        self._epoch = 0

    def attach(self, model: nn.Module) -> None:
        setattr(model, ATTRIBUTE, self.head)

    def detach(self, model: nn.Module) -> None:
        if hasattr(model, ATTRIBUTE):
            delattr(model, ATTRIBUTE)

    def _batches(self):
        while True:
            sampler = DistributedSampler(self.train, num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(self._epoch)
            self._epoch += 1
            yield from DataLoader(self.train, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collator)

    def loss(self, model: nn.Module) -> torch.Tensor:
        """Cross-entropy of the next source batch through the model's encoder and the source head."""
        if self._iterator is None:
            self._iterator = self._batches()
        batch = next(self._iterator)
        head = getattr(model, ATTRIBUTE)  # under LoRA, peft's wrapper around its trainable copy
        weight = next(p for p in head.parameters() if p.requires_grad)
        device = weight.device
        labels = batch.pop("labels").to(device)
        inputs = {k: v.to(device) for k, v in batch.items()}
        pooled = mean_pooled(model.base_model, inputs)
        return nn.functional.cross_entropy(head(pooled.to(weight.dtype)), labels)
