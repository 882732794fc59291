"""hftl as a library: `TransferPlan`, `Phases`, the penalties, and their errors on bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hftl
from hftl import HftlError, TransferPlan


def test_the_public_api_is_listed_and_documented():
    assert set(hftl.__all__) == {"TransferPlan", "Phases", "TowerPlan", "L2SP", "EWC", "HftlError"}
    for name in hftl.__all__:
        assert getattr(hftl, name).__doc__, name
    for method in ("build", "apply", "param_groups", "optimizer", "table", "chart"):
        assert getattr(TransferPlan, method).__doc__, method


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.block = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 2)


RULE = {"stem": r"^stem\.", "block": [r"^block\.", r"^norm\."], "head": r"^fc\."}


def test_a_rule_groups_a_plain_module_and_the_plan_is_explicit():
    model = Net()
    plan = TransferPlan.build(model, groups=RULE, strategy="partial", unfrozen_groups=1, learning_rate=1e-3,
                              layer_decay=0.5, head_lr=1e-2, weight_decay=0.1)
    assert all(p.requires_grad for p in model.parameters())  # build changes nothing
    assert [g.name for g in plan.groups] == ["stem", "block", "head"]
    assert plan.lrs == pytest.approx({"stem": 5e-4, "block": 1e-3, "head": 1e-2})
    plan.apply()
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {"stem.weight", "stem.bias"}
    groups = {g["name"]: g for g in plan.param_groups()}
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx({
        "stem": 5e-4, "stem/no_decay": 5e-4, "block": 1e-3, "block/no_decay": 1e-3, "head": 1e-2, "head/no_decay": 1e-2})
    assert {n: g["weight_decay"] for n, g in groups.items() if n.endswith("no_decay")} == dict.fromkeys(
        ["stem/no_decay", "block/no_decay", "head/no_decay"], 0.0)  # biases and the norm's scale
    assert {n: g["weight_decay"] for n, g in groups.items() if not n.endswith("no_decay")} == dict.fromkeys(
        ["stem", "block", "head"], 0.1)
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))  # frozen ones included
    optimizer = plan.optimizer(torch.optim.SGD, lr=123.0)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["head"] == pytest.approx(1e-2)  # the plan's lr wins
    table = plan.table()
    assert "frozen" in table and "trainable" in table and "block" in table


def test_a_callable_rule_and_the_chart(tmp_path):
    model = Net()
    plan = TransferPlan.build(model, groups=lambda name: "head" if name.startswith("fc.") else "body", strategy="full")
    assert [g.name for g in plan.groups] == ["body", "head"]
    path = plan.chart(tmp_path / "plan.png")
    assert path.stat().st_size > 5_000


def test_a_model_without_a_known_structure_shows_how_to_pass_a_rule():
    with pytest.raises(HftlError, match=r"cannot map `Net`.*TransferPlan.build\(model, groups=\{\"stem\": r\"\^stem"):
        TransferPlan.build(Net())


def test_a_rule_that_misses_or_repeats_parameters_names_them():
    with pytest.raises(HftlError, match=r"leaves 2 parameter\(s\) in no group: norm.weight, norm.bias"):
        TransferPlan.build(Net(), groups={"stem": r"^stem\.", "block": r"^block\.", "head": r"^fc\."})
    with pytest.raises(HftlError, match=r"assigns 2 parameter\(s\) to more than one group: block.weight \(block, any\)"):
        TransferPlan.build(Net(), groups={"block": r"^block\.", "any": r"^(block|norm|stem)\.", "head": r"^fc\."})
    with pytest.raises(HftlError, match="must end with the task head, named `head`"):
        TransferPlan.build(Net(), groups={"all": r"^(stem|block|norm)\.", "fc": r"^fc\."})


def test_a_plan_refuses_another_model():
    plan = TransferPlan.build(Net(), groups=RULE)
    other = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(HftlError, match=r"built for another model: 8 of its parameters are not in `Sequential`"):
        plan.apply(other)
    with pytest.raises(HftlError, match="built for another model"):
        plan.optimizer(torch.optim.AdamW, model=other)
    bigger = Net()
    bigger.extra = nn.Linear(2, 2)
    with pytest.raises(HftlError, match=r"2 of the model's are not in the plan \(extra.bias, extra.weight\)"):
        plan.param_groups(bigger)


def test_phases_in_a_plain_loop_keep_waiting_groups_still_and_out_of_the_clip():
    torch.manual_seed(0)
    model = Net()
    plan = TransferPlan.build(model, groups=RULE, strategy="full", learning_rate=0.1, head_lr=0.1)
    plan.apply()
    phases = hftl.Phases(plan, unfreeze_every=1)
    optimizer = plan.optimizer(torch.optim.AdamW, weight_decay=0.5)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    norms = []
    for epoch in range(3):
        phases.on_epoch(epoch)
        out = model.fc(model.norm(model.block(model.stem(x))))
        nn.functional.cross_entropy(out, y).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))  # waiting groups add nothing
        head_only = torch.sqrt(sum(p.grad.pow(2).sum() for n, p in model.named_parameters() if n.startswith("fc.")))
        if epoch == 0:
            assert norms[0] == pytest.approx(float(head_only))
        phases.drop_inactive_grads()
        optimizer.step()
        optimizer.zero_grad()
        if epoch == 0:  # weight decay 0.5 would move them if their (zeroed) grads reached AdamW
            assert all(torch.equal(p, start[n]) for n, p in model.named_parameters() if not n.startswith("fc."))
    assert [h["new"] for h in phases.history] == [["head"], ["block"], ["stem"]]
    phases.close()
    assert all(not torch.equal(p, start[n]) for n, p in model.named_parameters())


def test_penalties_are_callables_over_a_plan():
    model = Net()
    plan = TransferPlan.build(model, groups=RULE, strategy="full")
    plan.apply()
    l2sp = hftl.L2SP(plan, alpha=2.0)
    assert float(l2sp().detach()) == 0.0
    with torch.no_grad():
        model.block.weight.add_(1.0)  # 64 entries moved by 1: 2/2 * 64
        model.fc.weight.add_(1.0)  # the head has no pre-trained point: not counted
    loss = torch.tensor(1.0)
    assert float(l2sp(loss).detach()) == pytest.approx(1.0 + 64.0)
    batches = [{"x": torch.randn(4, 4)}]

    class Encoder(nn.Module):  # a stand-in with the `last_hidden_state` an HF encoder returns
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            from types import SimpleNamespace

            return SimpleNamespace(last_hidden_state=self.net.block(self.net.stem(x)).unsqueeze(1))

    ewc = hftl.EWC.estimate(plan, 1.0, Encoder(model), batches)
    assert len(ewc.roots) == len(ewc.params) and float(ewc().detach()) == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "ful"}, "Unknown strategy `ful`. Did you mean `full`?"),
    ({"layer_decay": -1.0}, "layer_decay must be > 0"),
    ({"learning_rate": -1e-4}, "learning_rate must be >= 0"),
    ({"head_lr": -1e-3}, "head_lr must be >= 0"),
    ({"strategy": "partial", "unfrozen_groups": 5}, r"unfrozen_groups=5 is out of range: this model has 2 backbone groups \(stem, block\)"),
])
def test_bad_plan_values_are_refused_before_anything_is_built(kwargs, message):
    with pytest.raises(HftlError, match=message):
        TransferPlan.build(Net(), groups=RULE, **kwargs)


def test_lora_adapters_join_their_blocks_groups(tiny_bert):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    plan = TransferPlan.build(model, strategy="lora", learning_rate=1e-3, layer_decay=0.5, head_lr=1e-2)
    plan.apply()
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"],
                                                  modules_to_save=["classifier"]))
    with pytest.raises(HftlError, match="built for another model"):
        plan.optimizer(torch.optim.AdamW, model=peft_model)  # the adapters are new parameters
    adapted = plan.with_adapters(peft_model)
    optimizer = adapted.optimizer(torch.optim.AdamW)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_A" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    for name, param in lora.items():  # block 1 is the top block: 1e-3; block 0 one below: 5e-4
        assert lr_of[id(param)] == pytest.approx(1e-3 if ".layer.1." in name else 5e-4), name
    trains = {n for n, t in adapted.trains.items() if t}
    assert not any(n.startswith("bert.embeddings.") for n in trains)
