"""TransferTrainer: the HF Trainer with hftl's optimizer groups and model card.

Only two things change: the optimizer is built from the layer-group assignment (explicit lr per
group, no-decay rule, coverage check), and the model card is hftl's; the trackers of `report_to` also
get one lr series per layer group (engine/tracking.py). Everything else (evaluation, checkpoints,
resume, mixed precision, gradient accumulation, report_to, push_to_hub, DDP/FSDP/DeepSpeed through
Accelerate) is the Trainer's own code path.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from hftl.engine import checkpoint_files
from hftl.engine.optim import Assignment, clean_name, param_groups
from hftl.engine.tracking import track_group_rates
from hftl.errors import HftlError, SaveFailed, first_line


class TransferTrainer(Trainer):
    def __init__(
        self,
        *args,
        assignment: dict[str, Assignment],
        write_card: Callable[[str], None] | None = None,
        backbone_swap=None,
        phases=None,
        plan_record: Callable[[str], None] | None = None,
        regularizer=None,
        replay=None,
        loss_fn=None,
        **kwargs,
    ):
        self.assignment = assignment
        self.write_card = write_card
        self.backbone_swap = backbone_swap  # features.BackboneSwap when training on cached features
        self.train_lengths: list[int] | None = None  # token counts of the examples behind cached features
        self.phases = phases  # phases.Phases when the run has more than one phase
        self.plan_record = plan_record  # writes the freeze plan into each checkpoint, for resume checks
        self.regularizer = regularizer  # forgetting.penalties L2SP, EWC or their Sum: a penalty added to the loss
        self.replay = replay  # replay.Replay or None: a source-task loss added to the task loss
        self.loss_fn = loss_fn  # a task's own loss (CLIP's contrastive loss), else the model's
        super().__init__(*args, **kwargs)
        if phases is not None:
            self.add_callback(phases)
        track_group_rates(self, phases)  # lr/<group> series for report_to's trackers
        # hftl's models return a per-batch mean loss and ignore `num_items_in_batch`. Left True (set for
        # any forward taking **kwargs), the Trainer treats that mean as already normalised: it skips the
        # division by gradient_accumulation_steps and multiplies by world_size under DDP, so losses and
        # gradients (hence max_grad_norm clipping) would grow with accumulation steps and ranks.
        self.model_accepts_loss_kwargs = False
        if loss_fn is not None:
            self.can_return_loss = True  # evaluation computes the task's loss though the batch has no `labels` key for it

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = param_groups(opt_model, self.assignment)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            for key in ("params", "model", "optimizer_dict"):
                optimizer_kwargs.pop(key, None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        self.callback_handler.optimizer = self.optimizer  # callbacks see it (Phases primes its state at train begin)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches, reproducible per epoch (so a resumed run sees the same order); over
        cached features they use the lengths of the original texts."""
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        size = self.args.train_batch_size * self.args.gradient_accumulation_steps
        if self.train_lengths is not None:
            return EpochLengthGroupedSampler(size, lengths=self.train_lengths, seed=seed)
        if "input_ids" not in getattr(dataset, "column_names", []):
            return super()._get_train_sampler(train_dataset)
        return EpochLengthGroupedSampler(size, dataset=dataset, model_input_name="input_ids", seed=seed)

    def _get_eval_sampler(self, eval_dataset):
        """Cached features all have length 1: evaluate them in order, not grouped by text length."""
        if self.backbone_swap is None or self.args.train_sampling_strategy != "group_by_length":
            return super()._get_eval_sampler(eval_dataset)
        self.args.train_sampling_strategy = "sequential"
        try:
            return super()._get_eval_sampler(eval_dataset)
        finally:
            self.args.train_sampling_strategy = "group_by_length"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_fn is not None:
            result = self.loss_fn(self, model, inputs, return_outputs)
        else:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if (self.regularizer is None and self.replay is None) or not model.training:
            return result
        loss, outputs = result if return_outputs else (result, None)
        if self.regularizer is not None:
            loss = loss + self.regularizer.penalty().to(loss.device, loss.dtype)
        if self.replay is not None:
            inner = self.accelerator.unwrap_model(model)
            inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
            loss = loss + self.replay.loss(inner).to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _clip_grad_norm(self, model):
        """Groups not active yet in this phase lose their gradient before it counts anywhere."""
        if self.phases is not None:
            self.phases.drop_inactive_grads()
        return super()._clip_grad_norm(model)

    def _save_checkpoint(self, model, trial):
        folder = Path(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        try:
            super()._save_checkpoint(model, trial)
            if self.plan_record is not None and self.is_world_process_zero() and folder.is_dir():
                self.plan_record(str(folder))
        except OSError as err:  # a full disk, a quota, a lost mount: the earlier checkpoints stay as they were
            raise save_failed(folder, err) from None

    def _whole_model(self):
        """Saving and loading see the full model, also while the head trains on cached features."""
        return self.backbone_swap.whole() if self.backbone_swap is not None else contextlib.nullcontext()

    def _save(self, *args, **kwargs):
        with self._whole_model():
            return super()._save(*args, **kwargs)

    def _load_from_checkpoint(self, *args, **kwargs):
        with self._whole_model():
            return super()._load_from_checkpoint(*args, **kwargs)

    def _load_best_model(self, *args, **kwargs):
        with self._whole_model():
            return super()._load_best_model(*args, **kwargs)

    def init_hf_repo(self, *args, **kwargs) -> None:
        """push_to_hub creates the Hub repo when the Trainer is built: a refusal there is a clear error."""
        try:
            super().init_hf_repo(*args, **kwargs)
        except Exception as err:  # permissions, a name taken, the network: huggingface_hub raises several types
            raise HftlError(
                f"push_to_hub could not create the Hub repo `{self.args.hub_model_id or Path(self.args.output_dir).name}`: "
                f"{first_line(err)}. Check that the token may write there (or set `hub_model_id`), or set "
                "`push_to_hub: false` and push the finished folder later with `hf upload`."
            ) from None

    def create_model_card(self, *args, **kwargs) -> None:
        """Called by push_to_hub: write hftl's card instead of the generic draft."""
        if self.write_card is not None and self.is_world_process_zero():
            self.write_card(self.args.output_dir)

    def replica_check(self, output_dir: str) -> dict | None:
        """Under distributed training, compare every parameter's fingerprint across ranks.

        Frozen-and-trainable mixes are where data-parallel bugs hide (a rank that skipped a
        gradient all-reduce drifts silently); the check costs one all-gather at the end.
        """
        world = self.args.world_size
        if world <= 1 or not torch.distributed.is_initialized() or self._sharded():
            return None
        mine = fingerprints(self.model)
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
        names = sorted(mine)
        in_sync = all(
            all(math.isclose(g[n][i], mine[n][i], rel_tol=0, abs_tol=1e-9) for n in names for i in range(2)) for g in gathered
        )
        report = {"world_size": world, "in_sync": in_sync, "parameters": len(names), "fingerprints": gathered}
        if self.is_world_process_zero():
            Path(output_dir, "replica_check.json").write_text(json.dumps(report, indent=1))
            status = "identical on all ranks" if in_sync else "DIFFERENT across ranks: report this as a bug"
            print(f"hftl: replica check over {world} ranks: weights {status}.")
        return report

    def _sharded(self) -> bool:
        """FSDP and ZeRO-3 hold a different shard per rank: equal replicas are not expected."""
        return bool(self.is_fsdp_enabled) or _zero_stage(self) == 3


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """LengthGroupedSampler whose order is a function of (seed, epoch) alone.

    The stock sampler draws from the global RNG when iterated; a run resumed mid-epoch restores
    that RNG at a different point and so trains on a different order than the run it continues.
    """

    def __init__(self, batch_size: int, seed: int, **kwargs):
        super().__init__(batch_size, **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it at every epoch start
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def save_failed(folder: Path, err: OSError) -> SaveFailed:
    """A checkpoint that could not be written is removed (unless it reads back whole), so that no resume
    picks up half of it; the error names the OS's reason."""
    if folder.is_dir() and checkpoint_files.problem(folder) is not None:
        shutil.rmtree(folder, ignore_errors=True)
    reason = err.strerror or first_line(err)
    where = f" ({err.filename})" if err.filename else ""
    return SaveFailed(f"Saving {folder.name} failed: {reason}{where}.")


def _zero_stage(trainer: Trainer) -> int:
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    return getattr(plugin, "zero_stage", 0) if trainer.is_deepspeed_enabled else 0


def fingerprints(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """Per parameter: (sum, dot with a fixed cosine sequence), in float64; equal weights give equal values."""
    out = {}
    for name, param in model.named_parameters():
        flat = param.detach().double().flatten().cpu()
        weights = torch.cos(torch.arange(flat.numel(), dtype=torch.float64))
        out[clean_name(name)] = (float(flat.sum()), float((flat * weights).sum()))
    return out
