"""Freeze plans and layer-wise optimizer groups: exact lrs, no-decay set, coverage, idempotence."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from conftest import write_recipe
from hftl.commands import train as run
from hftl.config import load_config
from hftl.errors import HftlError
from hftl.engine.freeze import FreezePlan
from hftl.engine.layers import layer_groups
from hftl.engine.optim import assign, group_lrs, no_decay, param_groups


@pytest.fixture
def bert(tiny_bert):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)


@pytest.fixture
def groups(bert):
    return layer_groups(bert)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _state(model) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def _names_of(groups, *group_names) -> set[str]:
    return {n for g in groups if g.name in group_names for n, _ in g.params}


# ---------------------------------------------------------------- learning rates


def test_group_lrs_exact(groups):
    lrs = group_lrs(groups, learning_rate=1e-3, layer_decay=0.5, head_lr=7e-3)
    assert list(lrs) == ["embeddings", "layer.0", "layer.1", "head"]
    assert lrs["embeddings"] == pytest.approx(2.5e-4, rel=1e-12)
    assert lrs["layer.0"] == pytest.approx(5e-4, rel=1e-12)
    assert lrs["layer.1"] == pytest.approx(1e-3, rel=1e-12)
    assert lrs["head"] == pytest.approx(7e-3, rel=1e-12)


def test_head_lr_defaults_to_learning_rate_and_decay_one_is_flat(groups):
    lrs = group_lrs(groups, learning_rate=2e-4, layer_decay=1.0, head_lr=None)
    assert lrs == pytest.approx({"embeddings": 2e-4, "layer.0": 2e-4, "layer.1": 2e-4, "head": 2e-4})


def test_assignment_carries_lr_and_decay_per_parameter(groups):
    lrs = group_lrs(groups, 1e-3, 0.5, 5e-3)
    assignment = assign(groups, lrs, weight_decay=0.01)
    for group in groups:
        for name, param in group.params:
            a = assignment[name]
            assert a.lr == lrs[group.name]
            assert a.group.split("/")[0] == group.name
            if no_decay(name, param):
                assert (a.weight_decay, a.group) == (0.0, f"{group.name}/no_decay")
            else:
                assert (a.weight_decay, a.group) == (0.01, group.name)


# ---------------------------------------------------------------- weight decay


def test_no_decay_set_exact(bert):
    nd = {n for n, p in bert.named_parameters() if no_decay(n, p)}
    expected = {n for n, p in bert.named_parameters() if p.ndim <= 1} | {"bert.embeddings.position_embeddings.weight"}
    assert nd == expected
    assert "bert.embeddings.word_embeddings.weight" not in nd  # word embeddings are weights: they decay
    assert "bert.embeddings.token_type_embeddings.weight" not in nd
    assert "classifier.weight" not in nd
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in nd
    assert "classifier.bias" in nd


def test_no_decay_does_not_match_substrings():
    """Rule 4: never match substrings; a 2-D `ln_proj` or `bn_weight` matrix still decays."""
    matrix = nn.Parameter(torch.zeros(3, 3))
    assert not no_decay("encoder.ln_proj.weight", matrix)
    assert not no_decay("encoder.bn_weight", matrix)
    assert not no_decay("encoder.my_position_embeddings_proj.weight", matrix)
    assert no_decay("vit.embeddings.cls_token", matrix)
    assert no_decay("logit_scale", nn.Parameter(torch.tensor(1.0)))


# ---------------------------------------------------------------- coverage


def test_param_groups_cover_every_parameter_once(bert, groups):
    FreezePlan("partial", 1).apply(groups)  # frozen parameters are in the optimizer too (rule 6)
    assignment = assign(groups, group_lrs(groups, 1e-3, 0.5, 5e-3), weight_decay=0.01)
    opt_groups = param_groups(bert, assignment)
    ids = [id(p) for g in opt_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in bert.parameters()}
    names = [g["name"] for g in opt_groups]
    assert len(names) == len(set(names))
    assert set(names) == {
        "embeddings", "embeddings/no_decay", "layer.0", "layer.0/no_decay", "layer.1", "layer.1/no_decay",
        "head", "head/no_decay",
    }
    by_name = {g["name"]: g for g in opt_groups}
    assert by_name["embeddings"]["lr"] == pytest.approx(2.5e-4)
    assert by_name["embeddings/no_decay"]["lr"] == pytest.approx(2.5e-4)
    assert by_name["head"]["lr"] == pytest.approx(5e-3)
    assert by_name["layer.1"]["weight_decay"] == 0.01
    assert by_name["layer.1/no_decay"]["weight_decay"] == 0.0
    for g in opt_groups:
        assert set(g) == {"params", "lr", "weight_decay", "name"}


def test_param_groups_see_through_wrappers(bert, groups):
    class Wrapper(nn.Module):  # named like DDP: parameters appear as `module.<name>`
        def __init__(self, module):
            super().__init__()
            self.module = module

    assignment = assign(groups, group_lrs(groups, 1e-3, 0.5, None), 0.0)
    opt_groups = param_groups(Wrapper(bert), assignment)
    assert sum(len(g["params"]) for g in opt_groups) == len(list(bert.parameters()))


def test_param_groups_refuse_a_parameter_outside_the_plan(bert, groups):
    assignment = assign(groups, group_lrs(groups, 1e-3, 0.5, None), 0.0)
    del assignment["classifier.weight"]
    with pytest.raises(HftlError, match=r"1 parameter\(s\) of `BertForSequenceClassification` are not in the plan: classifier.weight"):
        param_groups(bert, assignment)


# ---------------------------------------------------------------- freeze plans


def test_trainable_parameters_per_strategy(bert, groups):
    everything = {n for n, _ in bert.named_parameters()}
    head = _names_of(groups, "head")
    FreezePlan("feature_extraction").apply(groups)
    assert _trainable(bert) == head
    FreezePlan("partial", unfrozen_groups=1).apply(groups)
    assert _trainable(bert) == _names_of(groups, "layer.1", "head")
    FreezePlan("partial", unfrozen_groups=2).apply(groups)
    assert _trainable(bert) == _names_of(groups, "layer.0", "layer.1", "head")
    FreezePlan("partial", unfrozen_groups=0).apply(groups)
    assert _trainable(bert) == head
    FreezePlan("partial", unfrozen_groups=3).apply(groups)
    assert _trainable(bert) == everything
    FreezePlan("full").apply(groups)
    assert _trainable(bert) == everything
    # counts, as the plan table reports them
    FreezePlan("partial", unfrozen_groups=1).apply(groups)
    expected = sum(p.numel() for g in groups if g.name in ("layer.1", "head") for _, p in g.params)
    assert sum(p.numel() for p in bert.parameters() if p.requires_grad) == expected


def test_apply_returns_the_state_it_sets(bert, groups):
    state = FreezePlan("partial", 1, ("LayerNorm",)).apply(groups)
    assert state == _state(bert)


@pytest.mark.parametrize("value", [-1, 4, 10])
def test_unfrozen_groups_out_of_range(groups, value):
    with pytest.raises(HftlError) as info:
        FreezePlan("partial", unfrozen_groups=value).apply(groups)
    message = str(info.value)
    assert f"unfrozen_groups={value}" in message
    assert "3 backbone groups" in message and "from 0" in message and "to 3" in message


def test_freeze_pattern_freezes_matching_parameters(bert, groups):
    state = FreezePlan("full", patterns=("LayerNorm", r"^bert\.embeddings\.word_")).apply(groups)
    frozen = {n for n, trains in state.items() if not trains}
    expected = {n for n, _ in bert.named_parameters() if "LayerNorm" in n} | {"bert.embeddings.word_embeddings.weight"}
    assert frozen == expected
    assert _trainable(bert) == {n for n, _ in bert.named_parameters()} - expected


def test_freeze_pattern_combines_with_strategy(bert, groups):
    FreezePlan("partial", 1, ("attention",)).apply(groups)
    expected = {n for n in _names_of(groups, "layer.1", "head") if "attention" not in n}
    assert _trainable(bert) == expected


def test_freeze_pattern_matching_nothing_is_an_error(bert, groups):
    before = _state(bert)
    with pytest.raises(HftlError, match=r"freeze pattern `no_such_param` matches no parameter.*hftl plan"):
        FreezePlan("full", patterns=("LayerNorm", "no_such_param")).apply(groups)
    assert _state(bert) == before  # a refused plan leaves the model as it was


def test_invalid_freeze_regex_is_an_error(groups):
    with pytest.raises(HftlError, match="not a valid regular expression"):
        FreezePlan("full", patterns=("layer.(",)).apply(groups)


def test_apply_is_idempotent(bert, groups):
    plan = FreezePlan("partial", 1, ("LayerNorm",))
    first = plan.apply(groups)
    snapshot = _state(bert)
    assert plan.apply(groups) == first
    assert _state(bert) == snapshot


@pytest.mark.parametrize(
    "earlier",
    [FreezePlan("feature_extraction"), FreezePlan("full"), FreezePlan("partial", 2, ("bias",)), FreezePlan("full", patterns=("classifier",))],
    ids=["feature_extraction", "full", "partial2+bias", "full-classifier"],
)
def test_result_does_not_depend_on_earlier_plan(tiny_bert, earlier):
    def fresh():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        return model, layer_groups(model)

    target = FreezePlan("partial", 1, ("LayerNorm",))
    clean_model, clean_groups = fresh()
    target.apply(clean_groups)
    model, groups = fresh()
    earlier.apply(groups)
    target.apply(groups)
    assert _state(model) == _state(clean_model)


# ---------------------------------------------------------------- through the trainer


def test_transfer_trainer_optimizer_carries_the_plan(tiny_bert, sentiment_csv, tmp_path):
    """Build as `hftl train` does, train two steps, and read the lrs back from the real optimizer."""
    from hftl.engine.trainer import TransferTrainer

    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        output_dir=str(tmp_path / "out"), learning_rate=1e-3, layer_decay=0.5, head_lr=4e-3, weight_decay=0.01,
        strategy="partial", unfrozen_groups=1, lr_scheduler_type="constant", max_steps=2,
    )
    config = load_config(str(recipe))
    built = run.build(config)
    encoded = built.task.encode(config, built.raw, built.loaded)
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    trainer = TransferTrainer(
        model=built.model, args=config.training, train_dataset=encoded["train"],
        processing_class=built.processor, data_collator=built.task.collator(built.loaded),
        assignment=built.assignment,
    )
    trainer.train()
    expected = {"embeddings": 2.5e-4, "layer.0": 5e-4, "layer.1": 1e-3, "head": 4e-3}
    seen = set()
    for group in trainer.optimizer.param_groups:
        layer_group = group["name"].split("/")[0]
        assert group["lr"] == pytest.approx(expected[layer_group], rel=1e-9), group["name"]
        assert group["initial_lr"] == pytest.approx(expected[layer_group], rel=1e-9)
        assert group["weight_decay"] == (0.0 if group["name"].endswith("/no_decay") else 0.01)
        seen |= {id(p) for p in group["params"]}
    assert seen == {id(p) for p in built.model.parameters()}  # frozen ones included (rule 6)
    # the plan held: frozen groups did not move, trainable ones did
    after = dict(built.model.named_parameters())
    trains = _names_of(built.groups, "layer.1", "head")
    for name, old in before.items():
        if name in trains:
            continue
        assert torch.equal(after[name].detach(), old), f"frozen {name} changed"
    assert not torch.equal(after["classifier.weight"].detach(), before["classifier.weight"])
    assert not torch.equal(
        after["bert.encoder.layer.1.output.dense.weight"].detach(), before["bert.encoder.layer.1.output.dense.weight"]
    )


# ---------------------------------------------------------------- frozen modules in eval mode


def _dropout_modes(model) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules() if isinstance(m, nn.Dropout)}


def test_frozen_modules_stay_in_eval_mode_under_train(bert, groups):
    import copy

    from hftl.engine.freeze import set_frozen_eval

    FreezePlan("partial", unfrozen_groups=1).apply(groups)
    pinned = set_frozen_eval(bert)
    assert pinned == ["bert.embeddings", "bert.encoder.layer.0"]
    bert.train()
    modes = _dropout_modes(bert)
    assert not any(v for n, v in modes.items() if n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")))
    assert all(v for n, v in modes.items() if n.startswith("bert.encoder.layer.1."))
    assert bert.dropout.training  # the head's dropout still regularises
    # Frozen features are deterministic in train mode: same input, same hidden state from layer.0.
    ids = torch.randint(5, 20, (2, 8))
    outs = [bert.bert.encoder.layer[0](bert.bert.embeddings(ids))[0] for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    # A deep copy pins its own modules, not the original's.
    twin = copy.deepcopy(bert)
    bert.eval()
    twin.train()
    assert twin.bert.encoder.layer[1].training and not twin.bert.encoder.layer[0].training
    assert not bert.bert.encoder.layer[1].training


def test_frozen_eval_is_undone_by_a_new_plan_and_can_be_off(bert, groups):
    from hftl.engine.freeze import set_frozen_eval

    FreezePlan("feature_extraction").apply(groups)
    assert set_frozen_eval(bert)
    FreezePlan("full").apply(groups)
    assert set_frozen_eval(bert) == []
    bert.train()
    assert all(_dropout_modes(bert).values())
    FreezePlan("feature_extraction").apply(groups)
    assert set_frozen_eval(bert, enabled=False) == []
    bert.train()
    assert all(_dropout_modes(bert).values())
