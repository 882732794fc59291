"""`hftl plan` and `hftl train`: build the model and its plan, then (for train) fine-tune it.

`train` is one straight line for every run (commands/outline.py): preflight, build, inputs, the
run's files, the extras' before halves, the fit, their after halves, the save. The mode decides
what is fitted: the Trainer here (`TrainerMode`), or a task's own evaluation (commands/clip_eval.py).

Order matters for "nothing already written is lost": every check that can fail on bad input
(config, output_dir, data, model, plan, extras) runs before the first file is written.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from transformers import EarlyStoppingCallback, set_seed

from hftl.commands import card, clip_eval, outputs
from hftl.commands.extras import extras_for
from hftl.commands.outline import Inputs, Mode, Run
from hftl.config import RunConfig, write_resolved
from hftl.engine import preflight, run_folder
from hftl.engine.phases import Phases, check_resume, describe, write_plan_record
from hftl.engine.plan import text_table, write_plan
from hftl.engine.transfer import TransferPlan
from hftl.errors import HftlError, Interrupted, SaveFailed, first_line
from hftl.tasks import get_task


def plan_record(config: RunConfig) -> dict:
    """The settings that decide a run's phases: a checkpoint records them, a resume must match them."""
    t = config.transfer
    return {
        "strategy": t.strategy, "unfrozen_groups": t.unfrozen_groups if t.strategy == "partial" else None,
        "freeze": list(t.freeze), "head_warmup_epochs": t.head_warmup_epochs, "unfreeze_every": t.unfreeze_every,
    }


class TrainerMode(Mode):
    """Fine-tuning through TransferTrainer: the plan, the phases, the penalties, the saved model."""

    def build(self, config: RunConfig, task, resume: str | None = None, training: bool = True) -> Run:
        """Data, model and plan, with every input check done; writes nothing. `training=False` (`hftl plan`)
        stops at the plan: no EWC Fisher, no feature cache decision."""
        raw, labels = task.load_data(config)
        set_seed(config.training.seed)  # the new head's initialisation is part of the run
        run = Run(config, task, raw, task.build_model(config, labels), resume)
        if config.transfer.replay_data:
            from hftl.forgetting.replay import Replay

            run.replay = Replay(config, task, run.loaded)
            run.replay.attach(run.model)  # a head like the target's: in the head group, trained at head_lr
        t = config.transfer
        plan = task.plan(config, run.model)  # the same TransferPlan a script of its own builds (hftl.TransferPlan)
        plan.apply(eval_frozen=t.eval_frozen)
        if t.strategy == "lora":
            plan = self._lora(config, task, run, plan)
        run.plan = plan
        run.phase_control = Phases(plan, t.head_warmup_epochs, t.unfreeze_every, t.eval_frozen)
        if not training:
            return run
        run.regularizer = _regularizer(config, run)  # reads and checks ewc_data: before any write
        run.extras = extras_for(config, run)  # a refused cache request is bad input: also before any write
        return run

    @staticmethod
    def _lora(config: RunConfig, task, run: Run, plan: TransferPlan) -> TransferPlan:
        """Adapters in the frozen backbone; each lands in its block's group and trains at that group's lr."""
        from hftl.engine import lora

        t = config.transfer
        spec = lora.LoraSpec(t.lora_r, t.lora_alpha, t.lora_dropout, tuple(t.lora_target_modules),
                             task.capabilities.lora_task_type)
        run.loaded.model = lora.wrap(run.model, plan.groups, spec)
        wrapped = plan.with_adapters(run.model)
        wrapped.apply(eval_frozen=t.eval_frozen)
        return wrapped

    def fit(self, run: Run, inputs: Inputs, callbacks: list) -> dict:
        args = run.config.training
        self.trainer = trainer = _trainer(run, inputs)
        for callback in callbacks:
            trainer.add_callback(callback)
        try:
            result = trainer.train(resume_from_checkpoint=run.resume)
        except pickle.UnpicklingError:  # checked before the run (engine/checkpoint_files.py), changed since
            raise HftlError(f"A file of checkpoint `{run.resume}` holds Python objects torch's safe loader refuses: "
                            "hftl will not load it. Resume from another checkpoint, or start a fresh run.") from None
        trainer.replica_check(args.output_dir)
        metrics = dict(result.metrics)
        report_on = outputs.held_out(inputs.datasets) if trainer.compute_metrics is not None else None
        for split, prefix in (("validation", "eval"), ("test", "test")):
            if split not in inputs.datasets:
                continue
            if report_on == (split, prefix):  # the held-out split: predictions too, for the per-class report
                predicted = trainer.predict(inputs.datasets[split], metric_key_prefix=prefix)
                metrics.update(predicted.metrics)
                run.report = outputs.class_report(predicted.predictions, predicted.label_ids, run.labels.names,
                                                  run.labels.multi_label)
                run.report_split = split
            else:
                metrics.update(trainer.evaluate(inputs.datasets[split], metric_key_prefix=prefix))
        return metrics

    def save(self, run: Run, metrics: dict) -> None:
        try:
            self._save(run, metrics)
        except OSError as err:  # a full disk at the final save: the checkpoints written before it stay
            reason = err.strerror or str(err)
            raise SaveFailed(f"The final save into {run.config.training.output_dir} failed: {reason}"
                             f"{f' ({err.filename})' if err.filename else ''}.") from None

    def _save(self, run: Run, metrics: dict) -> None:
        config, trainer = run.config, self.trainer
        args = config.training
        trainer.save_model(_internal_call=True)  # no push from here: `publish` pushes once, card and metrics written
        if config.transfer.strategy == "lora" and run.main_process:
            from hftl.engine import lora

            lora.save_for_inference(run.model, args.output_dir, config.transfer.merge_lora, run.loaded.processor)
        trainer.log_metrics("final", metrics)
        trainer.save_metrics("all", metrics, combined=False)
        trainer.save_state()
        if run.main_process:
            curves = outputs.write_curves(args.output_dir, trainer.state.log_history)
            run.pictures = [curves] if curves else []
            if run.report is not None:
                run.pictures += outputs.write_class_report(args.output_dir, run.report, run.labels.names, run.report_split)
            card.write(args.output_dir, card.render(run, metrics))
            print(f"hftl: model, plan, metrics and model card written to {args.output_dir}")

    def publish(self, run: Run) -> None:
        """After the run is finished on disk: a failed upload loses nothing, and says how to push later."""
        args = run.config.training
        if not args.push_to_hub:
            return
        try:
            self.trainer.push_to_hub()
        except Exception as err:  # network, auth, quota: huggingface_hub raises several types
            repo = getattr(self.trainer, "hub_model_id", None) or args.hub_model_id or "REPO_ID"
            raise HftlError(
                f"The run is complete in {args.output_dir} (model, card, metrics), but pushing it to the Hub failed: "
                f"{first_line(err)}. Push it later with `hf upload {repo} {args.output_dir}`."
            ) from None


FREE_SPACE = "free some space (or point output_dir at a larger disk), then "
MODES = {"trainer": TrainerMode, "zero_shot": clip_eval.ZeroShotMode, "linear_probe": clip_eval.LinearProbeMode}


def train(config: RunConfig, command: str, callbacks: list | None = None) -> dict:
    """One run; Ctrl-C and a failed save end with the last complete checkpoint and the command that resumes it."""
    try:
        return _train(config, command, callbacks)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted. {_continue(config, command)}") from None
    except SaveFailed as err:
        raise HftlError(f"{err} {_continue(config, command, FREE_SPACE)}") from None


def _continue(config: RunConfig, command: str, first: str = "") -> str:
    return run_folder.how_to_continue(config.training.output_dir, command or f"hftl train {config.recipe_path}", first)


def _train(config: RunConfig, command: str, callbacks: list | None) -> dict:
    if config.training.world_size > 1:  # sets up the process group under accelerate launch / torchrun
        preflight.check_same_recipe(config.resolved(), config.recipe_path)
    task = get_task(config.transfer.task)
    mode = MODES[task.mode(config)]()
    resume, action = _preflight(config)
    outputs.reset_peak_memory(config.training.device)
    run = mode.build(config, task, resume)
    run.command = command
    _check_best_metric(run, mode.metric_names(run))
    inputs = Inputs(task.encode(config, run.raw, run.loaded), task.collator(run.loaded))
    if run.main_process:
        _write_run_files(run, action)
    for extra in run.extras:
        extra.before(run, inputs)
    metrics = mode.fit(run, inputs, callbacks or [])
    for extra in reversed(run.extras):
        extra.after(run, inputs, metrics)
    trainable = sum(row.trainable_params for row in run.rows)  # the plan's count: adapters and heads included
    metrics.update(trainable_params=trainable, **outputs.peak_memory(config.training.device))
    mode.save(run, metrics)
    if run.main_process:
        run_folder.finish(config.training.output_dir)
    mode.publish(run)
    return metrics


def build(config: RunConfig) -> Run:
    """The Trainer mode's data, model and plan for a recipe, checked and written nowhere (`hftl plan`, scripts)."""
    return TrainerMode().build(config, get_task(config.transfer.task))


def plan(config: RunConfig) -> Run:
    """Print the plan; write its files only where they replace no run's own (engine/run_folder.py)."""
    out = config.training.output_dir
    run_folder.check_writable(out)
    run = TrainerMode().build(config, get_task(config.transfer.task), training=False)
    print(text_table(run.rows))
    if len(run.phases) > 1:
        print("\n".join(describe(run.phases)))
    if not run_folder.plan_may_write(out):
        print(f"hftl: plan files not written: {out} holds a run, whose plan.md describes that run. Pass "
              "`--output_dir DIR` to write this plan's files elsewhere.")
        return run
    paths = write_plan(run.rows, out, _title(config))
    print(f"hftl: plan written to {', '.join(str(p) for p in paths)}")
    return run


def _title(config: RunConfig) -> str:
    origin = "from scratch" if config.model.from_scratch else config.transfer.strategy
    return f"{config.model.model_name_or_path} · {origin}"


def _preflight(config: RunConfig) -> tuple[str | None, str]:
    """Checks that need no model (output_dir, resume checkpoint, integrations, the Hub), with the token moved
    out first. Returns the checkpoint folder to resume from and what the run does with output_dir."""
    args = config.training
    action = preflight.check_output_dir(args.output_dir, config.transfer.overwrite_output_dir,
                                        bool(args.resume_from_checkpoint))
    resume = preflight.resolve_resume(args.resume_from_checkpoint, args.output_dir)
    if resume:
        check_resume(resume, plan_record(config))
    preflight.check_integrations(args.report_to)
    preflight.hide_token(args)
    preflight.check_hub(args)
    return resume, action


def _check_best_metric(run: Run, valid: list[str] | None) -> None:
    name = run.config.training.metric_for_best_model
    if not name or valid is None:
        return
    if name.removeprefix("eval_") not in valid:
        raise HftlError(
            f"metric_for_best_model `{name}` is not a metric of this task. Choose one of: {', '.join(dict.fromkeys(valid))}."
        )


def _write_run_files(run: Run, action: str) -> None:
    """The run marker first (a failed run is recognisable and reusable), then the plan (table, CSV, chart)
    and the resolved recipe, before the first step."""
    out = run.config.training.output_dir
    run_folder.claim(out, action)
    Path(out, "replica_check.json").unlink(missing_ok=True)  # never leave an earlier run's verdict
    if run.rows:
        print(text_table(run.rows))
        if len(run.phases) > 1:
            print("\n".join(describe(run.phases)))
        write_plan(run.rows, out, _title(run.config))
    write_resolved(run.config, Path(out) / "hftl_config.yaml")


def _regularizer(config: RunConfig, run: Run):
    from hftl.forgetting.penalties import EWC, L2SP, Sum, trainable_backbone

    t = config.transfer
    parts = []
    if t.l2_sp:
        parts.append(L2SP(run.plan, t.l2_sp))
    if t.ewc:
        model = run.model.get_base_model() if hasattr(run.model, "get_base_model") else run.model
        params = trainable_backbone(run.groups)
        if not params:
            raise HftlError("ewc protects trainable backbone weights, but the plan trains none (only the head): drop ewc "
                            "or train more of the backbone.")
        batches = run.task.source_batches(config, run.loaded, t.ewc_data, t.ewc_samples)
        model.to(config.training.device)
        ewc = EWC.estimate(run.plan, t.ewc, model.base_model, batches, seed=config.training.seed)
        print(f"hftl: EWC Fisher of {sum(r.numel() for r in ewc.roots):,} weights estimated on up to {t.ewc_samples} "
              f"examples of {t.ewc_data}.")
        parts.append(ewc)
    return parts[0] if len(parts) == 1 else (Sum(parts) if parts else None)


def _trainer(run: Run, inputs: Inputs):
    from hftl.engine.trainer import TransferTrainer

    config, t = run.config, run.config.transfer
    phases = run.phase_control if len(run.phases) > 1 else None
    if phases is not None and config.training.torch_compile:
        from hftl.engine import compiled

        limit = compiled.make_room(len(run.phases))
        print(compiled.describe(len(run.phases), t.eval_frozen, limit))
    record = plan_record(config)
    trainer = TransferTrainer(
        model=run.model,
        args=config.training,
        train_dataset=inputs.datasets["train"],
        eval_dataset=inputs.datasets.get("validation"),
        processing_class=run.loaded.processor,
        data_collator=inputs.collator,
        compute_metrics=run.task.compute_metrics_fn(run.labels),
        assignment=run.assignment,
        write_card=lambda folder: card.write(folder, card.render(run, _saved_metrics(folder))),
        backbone_swap=inputs.swap,
        phases=phases,
        plan_record=lambda folder: write_plan_record(folder, record, run.phases),
        regularizer=run.regularizer,
        replay=run.replay,
        loss_fn=run.task.loss_fn(config),
        callbacks=[EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold)]
        if t.early_stopping_patience else None,
    )
    trainer.train_lengths = inputs.lengths
    return trainer


def _saved_metrics(folder: str) -> dict:
    path = Path(folder, "all_results.json")
    return json.loads(path.read_text()) if path.exists() else {}
