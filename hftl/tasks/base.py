"""The task interface: everything the engine and the commands ask of a task, in one place.

A task turns a recipe into data, a model and what the Trainer needs (inputs, collator, metrics),
and declares what it supports as `Capabilities`. The rest of hftl asks for a capability
(`task.capabilities.cached_features`), never for a task's name, so a new task is one module that
subclasses `Task` plus one line in the registry (tasks/__init__.py).

Defaults here are the single-tower behaviour: one freeze plan and one lr plan over the model's
layer groups, no zero-shot metrics, the model's own loss, a first-token feature cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from hftl.engine.strategies import STRATEGIES
from hftl.errors import HftlError

if TYPE_CHECKING:  # the recipe config is the task's input; tasks never import it at run time (no cycle)
    from datasets import DatasetDict

    from hftl.config import RunConfig
    from hftl.engine.transfer import TransferPlan


@dataclass(frozen=True)
class Capabilities:
    """What a task supports. Commands and validation rules read these instead of task names."""

    cached_features: bool = False  # a frozen backbone's outputs can stand in for its inputs (feature extraction)
    text_embeddings: bool = False  # mean-pooled text embeddings: forgetting report, masked-LM replay, tokenizer probes
    source_batches: bool = False  # model inputs from another dataset, preprocessed like eval inputs (EWC's Fisher)
    replay: bool = False  # labelled source data learnt beside the target through the task's own loading
    phases: bool = True  # LP-FT (head_warmup_epochs) and gradual unfreezing (unfreeze_every)
    lora_task_type: str | None = None  # peft TaskType name of the task's forward; None: peft's plain wrapper
    compare: bool = False  # `hftl advise` measures it and `hftl sweep` compares its strategies
    zero_shot: bool = False  # zero-shot metrics before and after training; `hftl wise-ft`
    finished_runs: bool = False  # `hftl evaluate` and `hftl predict` read its saved run on new data
    towers: tuple[str, ...] = ()  # dual encoders: a freeze plan and lrs per tower (`text_*`, `vision_*` keys)
    naflex: bool = False  # SigLIP2 NaFlex images: patch sequences of their own aspect ratio (`max_num_patches`)
    strategies: tuple[str, ...] = STRATEGIES


@dataclass
class Loaded:
    """What `build_model` returns: the model and everything the later steps need with it."""

    model: Any
    processor: Any  # tokenizer, image processor or multimodal processor; saved beside the model
    labels: Any  # tasks.classification.Labels
    preprocess: Any = None  # data.preprocess.Preprocess for image inputs; never saved with the processor
    extra: dict = field(default_factory=dict)  # task-private values (kept here, never in a global)


class Task:
    """Base class of every task. Subclasses set `name`, `pipeline_task`, `capabilities` and implement
    `load_data`, `build_model`, `encode`; the rest has defaults that fit a single-tower model."""

    name: ClassVar[str] = ""
    pipeline_task: ClassVar[str] = ""  # the `transformers.pipeline` task the saved folder serves
    capabilities: ClassVar[Capabilities] = Capabilities()
    training_defaults: ClassVar[dict[str, Any]] = {}  # TrainingArguments defaults of this task; a user's own win
    cache_input: ClassVar[str] = "inputs_embeds"  # where cached features enter the model's forward
    required_training: ClassVar[dict[str, Any]] = {}  # TrainingArguments values the task cannot work without
    model_kind: ClassVar[str] = ""  # the checkpoints it takes (tasks/checkpoints.KINDS); empty: any

    # ---------------------------------------------------------------- recipe

    def defaults(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults for any recipe key, from the keys the user gave (applied before validation); what the
        task requires is also its default."""
        return {**self.training_defaults, **self.required_training}

    def validate(self, config: RunConfig) -> None:
        """Rules only this task knows; the generic ones (capabilities, ranges) run in config.validate."""
        for key, needed in self.required(config).items():
            if key in config.user_keys and getattr(config.training, key) != needed:
                raise HftlError(
                    f"{self.who(config)} needs `{key}: {str(needed).lower()}` ({self.why_required(key)}); the recipe "
                    f"sets `{getattr(config.training, key)}`. Drop `{key}`."
                )

    def required(self, config: RunConfig) -> dict[str, Any]:
        """TrainingArguments values this run cannot work without: a user's other value is an error."""
        return dict(self.required_training)

    def who(self, config: RunConfig) -> str:
        """How `validate`'s errors name what needs a setting."""
        return f"task {self.name}"

    def why_required(self, key: str) -> str:
        return "the task's inputs depend on it"

    def mode(self, config: RunConfig) -> str:
        """How `hftl train` runs this recipe: `trainer`, or a task's own evaluation mode (commands/train.MODES)."""
        return "trainer"

    # ---------------------------------------------------------------- data and model

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, Any]:
        """(train/validation[/test] splits with a `labels` column, the label set), every input checked."""
        raise NotImplementedError

    def build_model(self, config: RunConfig, labels) -> Loaded:
        raise NotImplementedError

    def encode(self, config: RunConfig, raw: DatasetDict, loaded: Loaded) -> DatasetDict:
        """Model inputs for every split (tokenised, or images decoded on access)."""
        raise NotImplementedError

    def collator(self, loaded: Loaded) -> Callable:
        from transformers import default_data_collator

        return default_data_collator

    def model_source(self, config: RunConfig) -> str:
        from hftl.tasks.checkpoints import model_source

        return model_source(config)

    def source_batches(self, config: RunConfig, loaded: Loaded, name: str, samples: int, batch_size: int = 16):
        """Model-input batches (no labels) of another dataset, preprocessed as eval inputs (EWC's Fisher)."""
        raise HftlError(f"task {self.name} cannot read another dataset as model inputs (ewc_data).")

    # ---------------------------------------------------------------- a finished run on new data (finished_runs)

    def eval_split(self, config: RunConfig, labels, split: str | None) -> DatasetDict:
        """One labelled split of `config.data`'s source, read and checked like training data, its `labels` in the
        saved model's label set `labels` (`hftl evaluate`)."""
        raise HftlError(f"task {self.name} cannot evaluate a finished run on new data.")

    def input_columns(self, config: RunConfig) -> dict[str, str]:
        """{recipe key: column} of the model's inputs in an unlabelled row (`hftl predict`)."""
        return {}

    def row_inputs(self, config: RunConfig, loaded: Loaded) -> Callable[[dict], Any]:
        """A function from one unlabelled row to its model input as eval data is preprocessed (the collator batches
        them); it raises errors.BadRow with the reason for a row it cannot use (`hftl predict`)."""
        raise HftlError(f"task {self.name} cannot predict with a finished run.")

    # ---------------------------------------------------------------- plan

    def plan(self, config: RunConfig, model) -> TransferPlan:
        """The recipe's transfer plan for `model` (not applied yet): one freeze plan and lr plan over its groups."""
        from hftl.engine.transfer import TransferPlan

        t = config.transfer
        return TransferPlan.build(model, strategy=t.strategy, unfrozen_groups=t.unfrozen_groups,
                                  learning_rate=config.training.learning_rate, layer_decay=t.layer_decay,
                                  head_lr=t.head_lr, weight_decay=config.training.weight_decay, freeze=t.freeze)

    # ---------------------------------------------------------------- training and metrics

    def loss_fn(self, config: RunConfig) -> Callable | None:
        """A loss of the task's own (CLIP's contrastive loss); None: the model's."""
        return None

    def compute_metrics_fn(self, labels) -> Callable | None:
        return None

    def best_metric(self, labels) -> str:
        return "loss"

    def metric_names(self, labels) -> list[str]:
        return ["loss"]

    def zero_shot_metrics(self, config: RunConfig, loaded: Loaded, encoded: DatasetDict,
                          splits: tuple[str, ...] | None = None) -> dict[str, float]:
        """Zero-shot scores of the model as it is now; empty where the task has none."""
        return {}

    # ---------------------------------------------------------------- cached features

    def cache_blockers(self, config: RunConfig, model=None) -> list[str]:
        """Why features cannot be cached for this run and model (empty: they can)."""
        return [] if self.capabilities.cached_features else [f"task `{self.name}` does not support cached features"]

    def cache_tokens(self, model) -> str:
        """`first`: the head reads only the first token of the last block; `all`: it pools every token."""
        return "first"

    # ---------------------------------------------------------------- model card

    def describe_inputs(self, config: RunConfig) -> str:
        return ""

    def describe_strategy(self, config: RunConfig) -> str | None:
        """The card's strategy line where the task's own differs from the recipe's strategy; None otherwise."""
        return None

    def describe_rates(self, config: RunConfig) -> str:
        t, lr = config.transfer, config.training.learning_rate
        head = t.head_lr if t.head_lr is not None else lr
        return f"base {lr:g}, layer_decay {t.layer_decay:g}, head {head:g}"
