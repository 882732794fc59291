"""The task interface: every registered task declares itself fully, task defaults are applied before
validation, and a user's explicit value that a task cannot honour is an error, not a silent override."""

from __future__ import annotations

import pytest

from conftest import write_recipe
from hftl.config import load_config
from hftl.errors import HftlError
from hftl.tasks import TASKS, get_task
from hftl.tasks.base import Capabilities, Task


def _recipe(tmp_path, **values):
    # validation needs no model or data: a name is enough
    return str(write_recipe(tmp_path / "r.yaml", model_name_or_path="some/model", dataset="some/data", **values))


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registered_task_declares_itself(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name and task.pipeline_task
    assert isinstance(task.capabilities, Capabilities) and task.capabilities.strategies
    for method in ("load_data", "build_model", "encode"):  # the three a task must write itself
        assert getattr(type(task), method) is not getattr(Task, method), f"{name} inherits {method}"


def test_unknown_task_names_the_nearest(tmp_path):
    with pytest.raises(HftlError, match="Unknown task `image-clasification`. Did you mean `image-classification`"):
        load_config(_recipe(tmp_path, task="image-clasification"))


def test_task_training_defaults_apply_and_the_user_wins_where_the_task_allows(tmp_path):
    text = load_config(_recipe(tmp_path))
    assert str(getattr(text.training.train_sampling_strategy, "value", text.training.train_sampling_strategy)) == "group_by_length"
    plain = load_config(_recipe(tmp_path, train_sampling_strategy="random"))
    assert str(getattr(plain.training.train_sampling_strategy, "value", plain.training.train_sampling_strategy)) == "random"
    image = load_config(_recipe(tmp_path, task="image-classification"))
    assert image.training.remove_unused_columns is False


@pytest.mark.parametrize("task", ["image-classification", "clip"])
def test_a_setting_the_task_cannot_honour_is_refused(task, tmp_path):
    """Images are decoded from their column on the fly: the Trainer must keep it."""
    with pytest.raises(HftlError, match=f"task {task} needs `remove_unused_columns: false`"):
        load_config(_recipe(tmp_path, task=task, remove_unused_columns=True))


def test_clip_modes_have_their_own_defaults(tmp_path):
    contrastive = load_config(_recipe(tmp_path, task="clip"))
    assert contrastive.training.prediction_loss_only is True and contrastive.data.augment is True
    probe = load_config(_recipe(tmp_path, task="clip", clip_mode="linear_probe"))
    assert probe.data.augment is False  # each image is embedded once
    assert probe.training.prediction_loss_only is False and probe.training.label_names == ["labels"]
    with pytest.raises(HftlError, match="clip_mode zero_shot embeds each image once, so it cannot augment"):
        load_config(_recipe(tmp_path, task="clip", clip_mode="zero_shot", augment=True))


@pytest.mark.parametrize("task, key, value, needed", [
    ("image-classification", "source_eval", "builtin:fine-foods", "text-classification"),
    ("clip", "head_warmup_epochs", 1, "text-classification, image-classification"),
    ("clip", "ewc", 1.0, "text-classification, image-classification"),
    ("clip", "replay_data", "builtin:bbc-news", "text-classification, image-classification"),
])
def test_a_key_whose_feature_the_task_lacks_names_the_tasks_that_have_it(task, key, value, needed, tmp_path):
    extra = {"ewc_data": "builtin:bbc-news"} if key == "ewc" else {}
    with pytest.raises(HftlError, match=f"{key} is not available for task {task} .*tasks that have it: {needed}"):
        load_config(_recipe(tmp_path, task=task, **{key: value}, **extra))


def test_the_config_is_not_changed_after_loading(tmp_path):
    """The resolved config written at the start is the config the run used: loading it gives the same values."""
    from hftl.config import write_resolved

    config = load_config(_recipe(tmp_path, task="clip", clip_mode="linear_probe"), ["--from_scratch", "true"])
    assert config.transfer.strategy == "full"  # a default from from_scratch, applied before validation
    write_resolved(config, tmp_path / "resolved.yaml")
    again = load_config(str(tmp_path / "resolved.yaml"))
    for part in ("model", "data", "transfer"):
        assert getattr(again, part) == getattr(config, part)


@pytest.mark.parametrize("key, value", [("prediction_loss_only", True), ("label_names", ["label"])])
def test_the_linear_probe_refuses_settings_that_would_hide_its_accuracy(key, value, tmp_path):
    with pytest.raises(HftlError, match=f"clip_mode linear_probe needs `{key}"):
        load_config(_recipe(tmp_path, task="clip", clip_mode="linear_probe", **{key: value}))
