"""`hftl plan` and `hftl train`: build the model and its plan, then (for train) fine-tune it.

Order matters for "nothing already written is lost": every check that can fail on bad input
(config, output_dir, data, model, plan) runs before the first file is written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from transformers import EarlyStoppingCallback, default_data_collator, set_seed

from hftl.commands import card
from hftl.config import RunConfig, check_output_dir, write_resolved
from hftl.errors import HftlError
from hftl.engine.features import BackboneSwap, cached_splits, should_cache
from hftl.forgetting.report import knn_accuracy
from hftl.engine.freeze import FreezePlan, set_frozen_eval
from hftl.engine import towers
from hftl.engine.layers import LayerGroup, is_dual_encoder, layer_groups
from hftl.engine.phases import Phase, PhaseController, check_resume, describe, schedule, write_plan_record
from hftl.engine.optim import Assignment, assign, group_lrs
from hftl.forgetting.penalties import EWC, L2SP, Sum, embedding_fisher, trainable_backbone
from hftl.engine.plan import PlanRow, plan_rows, text_table, write_plan
from hftl.tasks import get_task


@dataclass
class Built:
    task: object
    raw: object
    labels: object
    model: object
    processor: object
    groups: list[LayerGroup]
    assignment: dict[str, Assignment]
    rows: list[PlanRow]
    phases: list[Phase]
    replay: object = None  # replay.Replay when replay_data is set


def build(config: RunConfig) -> Built:
    """Data, model and plan, with every input check done; writes nothing."""
    if config.model.from_scratch and config.transfer.strategy != "full":
        print(f"hftl: from_scratch trains every layer: strategy `{config.transfer.strategy}` becomes `full`.")
        config.transfer.strategy = "full"
    task = get_task(config.transfer.task)
    raw, labels = task.load_data(config)
    set_seed(config.training.seed)  # the new head's initialisation is part of the run
    model, processor = task.build_model(config, labels)
    replay = None
    if config.transfer.replay_data:
        from hftl.forgetting.replay import Replay

        replay = Replay(config, task, processor, model)
        replay.attach(model)  # a head like the target's: in the head group, trained at head_lr
    groups = layer_groups(model)
    if is_dual_encoder(model):
        state, lrs = towers.apply_plan(config, groups)  # a freeze plan and lrs per tower
    else:
        plan = FreezePlan(config.transfer.strategy, config.transfer.unfrozen_groups, tuple(config.transfer.freeze))
        state = plan.apply(groups)
        lrs = group_lrs(groups, config.training.learning_rate, config.transfer.layer_decay, config.transfer.head_lr)
    if config.transfer.strategy == "lora":
        from hftl.engine import lora

        model = lora.wrap(model, config, groups)
        groups = layer_groups(model.get_base_model())  # adapters land in their block's group
        state = {n: p.requires_grad for g in groups for n, p in g.params}
    trains = {g.name: any(p.requires_grad for _, p in g.params) for g in groups}
    phases = schedule(groups, trains, config.transfer.head_warmup_epochs, config.transfer.unfreeze_every)
    if not any(state.values()):
        raise HftlError("The freeze plan leaves nothing to train: check `freeze` patterns (they are regexes searched in parameter names).")
    set_frozen_eval(model, config.transfer.eval_frozen)
    assignment = assign(groups, lrs, config.training.weight_decay)
    return Built(task, raw, labels, model, processor, groups, assignment, plan_rows(groups, assignment), phases, replay)


def _title(config: RunConfig) -> str:
    origin = "from scratch" if config.model.from_scratch else config.transfer.strategy
    return f"{config.model.model_name_or_path} · {origin}"


def plan(config: RunConfig) -> Built:
    built = build(config)
    print(text_table(built.rows))
    if len(built.phases) > 1:
        print("\n".join(describe(built.phases)))
    paths = write_plan(built.rows, config.training.output_dir, _title(config))
    print(f"hftl: plan written to {', '.join(str(p) for p in paths)}")
    return built


def _hide_token(config: RunConfig) -> None:
    """Move a command-line hub token into the environment, where huggingface_hub finds it.

    The Trainer pickles TrainingArguments into training_args.bin in every checkpoint and in the
    pushed folder; a token left in the arguments would be uploaded with the model.
    """
    if config.training.hub_token:
        os.environ["HF_TOKEN"] = config.training.hub_token
        config.training.hub_token = None


def _resolve_resume(config: RunConfig) -> None:
    """`true`/`last` mean the newest checkpoint in output_dir; any other value must be a checkpoint folder."""
    value = config.training.resume_from_checkpoint
    if not value:
        return
    out = config.training.output_dir
    if str(value).lower() in ("true", "last"):
        last = _last_complete_checkpoint(out)
        if last is None:
            raise HftlError(
                f"resume_from_checkpoint={value} but `{out}` holds no checkpoint-* folder. Train with a save_strategy "
                "first, or pass the checkpoint folder's path."
            )
        config.training.resume_from_checkpoint = last
    elif not _complete(Path(value)):
        raise HftlError(
            f"resume_from_checkpoint `{value}` is not a complete checkpoint folder (weights, trainer state and RNG "
            "state; a run killed while saving leaves an incomplete one). Pass a "
            f"`{out}/checkpoint-N` folder, or `true` for the newest one."
        )


def _complete(folder: Path) -> bool:
    """The Trainer writes weights, optimizer, trainer_state.json, then RNG state: all there = finished."""
    weights = any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin"))
    return weights and (folder / "trainer_state.json").is_file() and any(folder.glob("rng_state*.pth"))


def _last_complete_checkpoint(out: str) -> str | None:
    """Newest checkpoint-N that was fully written; a kill during a save leaves a partial one behind."""
    if not os.path.isdir(out):
        return None
    folders = sorted(Path(out).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    for folder in reversed(folders):
        if _complete(folder):
            return str(folder)
        print(f"hftl: skipping {folder.name}: incomplete (the run stopped while saving it).")
    return None


def _check_integrations(config: RunConfig) -> None:
    """A report_to backend that is not installed fails after the plan is written; check it first."""
    packages = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                "comet_ml": ("comet_ml",), "clearml": ("clearml",), "dvclive": ("dvclive",), "trackio": ("trackio",)}
    for name in config.training.report_to or []:
        needed = packages.get(name)
        if needed and not any(importlib.util.find_spec(p) for p in needed):
            raise HftlError(f"report_to includes `{name}` but it is not installed: pip install {needed[0]} (or drop it from report_to).")


def _check_best_metric(config: RunConfig, built: Built) -> None:
    name = config.training.metric_for_best_model
    if not name:
        return
    valid = [built.task.best_metric(built.labels), "loss", *built.task.metric_names(built.labels)]
    if name.removeprefix("eval_") not in valid:
        raise HftlError(
            f"metric_for_best_model `{name}` is not a metric of this task. Choose one of: {', '.join(dict.fromkeys(valid))}."
        )


def _preflight(config: RunConfig) -> None:
    """Checks that need no model: output_dir, resume checkpoint, integrations; then the token moves out."""
    check_output_dir(config)
    _resolve_resume(config)
    if config.training.resume_from_checkpoint:
        check_resume(config.training.resume_from_checkpoint, config)
    _check_integrations(config)
    _hide_token(config)


def _write_plan_files(config: RunConfig, built: Built) -> None:
    out = config.training.output_dir
    Path(out, "replica_check.json").unlink(missing_ok=True)  # never leave an earlier run's verdict
    print(text_table(built.rows))
    if len(built.phases) > 1:
        print("\n".join(describe(built.phases)))
    write_plan(built.rows, out, _title(config))
    write_resolved(config, Path(out) / "hftl_config.yaml")


def _inputs(config: RunConfig, built: Built, encoded, cache: bool):
    """(datasets, collator, backbone swap, train lengths): cached features when only the head trains."""
    collator = built.task.collator(built.processor)
    if not cache:
        return encoded, collator, None, None
    swap = BackboneSwap.of(built.model)
    lengths = None
    if "input_ids" in encoded["train"].column_names:
        lengths = [len(ids) for ids in encoded["train"]["input_ids"]]  # batches grouped as without the cache
    cached = cached_splits(built.model, encoded, collator, config, built.task)
    swap.detach()
    return cached, default_data_collator, swap, lengths


def train(config: RunConfig, command: str, callbacks: list | None = None) -> dict:
    if config.transfer.task == "clip" and config.transfer.clip_mode != "contrastive":
        from hftl.commands import clip_eval

        return clip_eval.run(config, command)
    _preflight(config)
    _reset_peak_memory(config.training.device)
    built = build(config)
    _check_best_metric(config, built)
    cache = should_cache(config, built.groups, built.task)  # a refused cache request is bad input: before any write
    regularizer = _regularizer(config, built)  # reads and checks ewc_data: also before any write
    args = config.training
    encoded = built.task.encode(config, built.raw, built.processor)
    main_process = args.process_index == 0
    if main_process:
        _write_plan_files(config, built)

    def write_card(output_dir: str, metrics: dict | None = None) -> None:
        if metrics is None:
            path = Path(output_dir, "all_results.json")
            metrics = json.loads(path.read_text()) if path.exists() else {}
        text = card.render(config, built.rows, metrics, command, built.labels.names, built.task.PIPELINE_TASK)
        card.write(output_dir, text)

    source_before = knn_accuracy(built.model, built.processor, config) if config.transfer.source_eval else None
    zero_shot = getattr(built.task, "zero_shot_metrics", None)
    zero_shot_before = zero_shot(config, built.model, built.processor, built.labels, encoded) if zero_shot else {}
    encoded, collator, swap, lengths = _inputs(config, built, encoded, cache)
    trainer = _trainer(config, built, encoded, write_card, collator, swap, regularizer)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    trainer.train_lengths = lengths
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.replica_check(args.output_dir)
    metrics = dict(result.metrics)
    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split in encoded:
            metrics.update(trainer.evaluate(encoded[split], metric_key_prefix=prefix))
    if swap is not None:
        swap.attach()  # from here on (save, push) the model is whole
    if zero_shot_before:
        after = zero_shot(config, built.model, built.processor, built.labels, encoded)
        metrics.update({f"{k}_before": v for k, v in zero_shot_before.items()})
        metrics.update({f"{k}_after": v for k, v in after.items()})
    if source_before is not None:
        after = knn_accuracy(built.model, built.processor, config)
        metrics.update(source_knn_accuracy_before=source_before, source_knn_accuracy_after=after,
                       source_forgetting=source_before - after)
    trainable = sum(row.trainable_params for row in built.rows)  # the plan's count: adapters and heads included
    metrics.update(trainable_params=trainable, **_peak_memory(args.device))
    _save(config, built, trainer, metrics, write_card)
    return metrics


def _reset_peak_memory(device) -> None:
    """A process that trains more than once (an in-process sweep) reports each run's own GPU peak."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device) -> dict:
    """Peak memory of this process: what torch allocated on the GPU, or the resident set size on CPU."""
    import resource

    import torch

    if device.type == "cuda":
        return {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    unit = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit, 1)}


def _save(config: RunConfig, built: Built, trainer, metrics: dict, write_card) -> None:
    args = config.training
    if built.replay is not None:
        inner = built.model.get_base_model() if hasattr(built.model, "get_base_model") else built.model
        built.replay.detach(inner)  # the saved folder is the target model alone
    trainer.save_model()
    main_process = args.process_index == 0
    if config.transfer.strategy == "lora" and main_process:
        from hftl.engine import lora

        lora.save_for_inference(built.model, args.output_dir, config.transfer.merge_lora, built.processor)
    trainer.log_metrics("final", metrics)
    trainer.save_metrics("all", metrics, combined=False)
    trainer.save_state()
    if main_process:
        write_card(args.output_dir, metrics)
        print(f"hftl: model, plan, metrics and model card written to {args.output_dir}")
    if args.push_to_hub:
        trainer.push_to_hub()


def _regularizer(config: RunConfig, built: Built):
    t = config.transfer
    parts = []
    if t.l2_sp:
        parts.append(L2SP(built.groups, t.l2_sp))
    if t.ewc:
        from hftl.forgetting.report import source_batches

        model = built.model.get_base_model() if hasattr(built.model, "get_base_model") else built.model
        params = trainable_backbone(built.groups)
        if not params:
            raise HftlError("ewc protects trainable backbone weights, but the plan trains none (only the head): drop ewc or train more of the backbone.")
        batches = source_batches(config, built.processor, t.ewc_data, t.ewc_samples)
        model.to(config.training.device)
        fisher = embedding_fisher(model.base_model, params, batches, seed=config.training.seed)
        print(f"hftl: EWC Fisher of {sum(f.numel() for f in fisher):,} weights estimated on up to {t.ewc_samples} "
              f"examples of {t.ewc_data}.")
        parts.append(EWC(built.groups, t.ewc, fisher))
    return parts[0] if len(parts) == 1 else (Sum(parts) if parts else None)


def _trainer(config: RunConfig, built: Built, encoded, write_card, collator, swap, regularizer=None):
    from hftl.engine.trainer import TransferTrainer

    t = config.transfer

    return TransferTrainer(
        model=built.model,
        args=config.training,
        train_dataset=encoded["train"],
        eval_dataset=encoded.get("validation"),
        processing_class=built.processor,
        data_collator=collator,
        compute_metrics=built.task.compute_metrics_fn(built.labels),
        assignment=built.assignment,
        write_card=write_card,
        backbone_swap=swap,
        phases=PhaseController(built.model, built.groups, built.phases, config.transfer.eval_frozen)
        if len(built.phases) > 1 else None,
        plan_record=lambda folder: write_plan_record(folder, config, built.phases),
        regularizer=regularizer,
        replay=built.replay,
        loss_fn=built.task.loss_fn(config) if hasattr(built.task, "loss_fn") else None,
        callbacks=[EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold)]
        if t.early_stopping_patience else None,
    )
