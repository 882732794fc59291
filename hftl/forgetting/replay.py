"""Replay against forgetting: every training step also learns a batch of a source task.

Two kinds, chosen by the data. Labelled source data (it has the recipe's `label_column`) is a
source task with its own head: a linear layer on the encoder's mean-pooled output. Unlabelled
text, for a checkpoint that ships a masked-language-model head, is masked-LM replay: the
pre-training objective itself, 15% of the tokens masked, through that head (its decoder tied to
the model's word embeddings). Either way the encoder must stay good at the source task while it
learns the target task. Each step adds the source batch's
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
from typing import TYPE_CHECKING

import torch
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from hftl.data.sources import load_splits
from hftl.engine.pooling import mean_pooled
from hftl.errors import HftlError

if TYPE_CHECKING:
    from hftl.config import RunConfig
    from hftl.tasks.base import Loaded, Task

ATTRIBUTE = "hftl_replay_head"


class Replay:
    def __init__(self, config: RunConfig, task: Task, loaded: Loaded):
        t = config.transfer
        source = copy.copy(config)
        source.data = dataclasses.replace(
            config.data, dataset=t.replay_data, train_file=None, validation_file=None, test_file=None,
            class_names=[], max_train_samples=None, max_eval_samples=None, label_separator=None, image_root=None,
        )
        args = config.training
        self.batch_size = max(1, round(t.replay_ratio * args.per_device_train_batch_size))
        self.seed, self.rank, self.world = args.seed, args.process_index, args.world_size
        self._iterator = None
        self._epoch = 0
        model = loaded.model
        if task.capabilities.text_embeddings and not _has_column(source, config.data.label_column):
            self.kind = "mlm"
            self._masked_lm(config, source, task, loaded)
            return
        self.kind = "labelled"
        try:
            raw, labels = task.load_data(source)
        except HftlError as err:
            raise HftlError(f"replay_data `{t.replay_data}` does not fit this task's recipe keys: {err}") from None
        if labels.multi_label:
            raise HftlError(f"replay_data `{t.replay_data}` is multi-label; replay needs one label per example.")
        self.labels = labels.names
        self.train = task.encode(source, raw, loaded)["train"]
        self.collator = task.collator(loaded)
        generator = torch.Generator().manual_seed(args.seed)
        self.head = nn.Linear(model.config.hidden_size, len(self.labels))
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) * 0.02)
            self.head.bias.zero_()

    def _masked_lm(self, config: RunConfig, source: RunConfig, task: Task, loaded: Loaded) -> None:
        """Unlabelled text: the checkpoint's own MLM head, its decoder tied to the model's word embeddings."""
        from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

        name = config.transfer.replay_data
        path = task.model_source(config)
        processor, model = loaded.processor, loaded.model
        try:
            mlm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True, revision=config.model.revision,
                                                           trust_remote_code=config.model.trust_remote_code)
        except (OSError, ValueError, KeyError):
            info = None
        if info is None or info["missing_keys"]:
            raise HftlError(
                f"replay_data `{name}` has no label column `{config.data.label_column}`, so it would be masked-LM replay, "
                f"but `{config.model.model_name_or_path}` ships no masked-language-model head. Give labelled source data "
                "(a source task with its own head) or a checkpoint with an MLM head."
            )
        raw = load_splits(source.data, config.model.trust_remote_code)["train"]
        if config.data.text_column not in raw.column_names:
            raise HftlError(
                f"replay_data `{name}` has no `{config.data.text_column}` column (from `text_column`); its columns are "
                f"{', '.join(raw.column_names)}."
            )
        source.data = dataclasses.replace(source.data, text_pair_column=None)  # plain text: one sequence each
        self.train = task.encode(source, DatasetDict(train=raw.select_columns([config.data.text_column])), loaded)["train"]
        self.collator = DataCollatorForLanguageModeling(processor, mlm_probability=0.15)
        self.head = next(m for n, m in mlm.named_children() if n != mlm.base_model_prefix)
        decoder = mlm.get_output_embeddings()
        if decoder is not None and decoder.weight.shape == model.get_input_embeddings().weight.shape:
            decoder.weight = model.get_input_embeddings().weight  # tied, as in pre-training
        self.labels = []

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
        """Cross-entropy of the next source batch through the model's encoder and the source head
        (masked tokens through the MLM head, for masked-LM replay)."""
        if self._iterator is None:
            self._iterator = self._batches()
        batch = next(self._iterator)
        head = getattr(model, ATTRIBUTE)  # under LoRA, peft's wrapper around its trainable copy
        weight = next(p for p in head.parameters() if p.requires_grad)
        device = weight.device
        labels = batch.pop("labels").to(device)
        inputs = {k: v.to(device) for k, v in batch.items()}
        if self.kind == "mlm":
            hidden = model.base_model(**inputs).last_hidden_state
            masked = labels != -100  # only the ~15% masked tokens go through the vocabulary-sized decoder
            return nn.functional.cross_entropy(head(hidden[masked]).float(), labels[masked])
        pooled = mean_pooled(model.base_model, inputs)
        return nn.functional.cross_entropy(head(pooled.to(weight.dtype)), labels)


def _has_column(source: RunConfig, column: str) -> bool:
    """Whether the source data has `column` (read once here; the loaders read it again)."""
    try:
        return column in load_splits(source.data, source.model.trust_remote_code)["train"].column_names
    except HftlError:
        return True  # let the labelled path report the problem in full
