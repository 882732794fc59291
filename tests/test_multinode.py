"""A two-node launch on one machine: two `accelerate launch` processes with `--num_machines 2 --machine_rank 0|1
--main_process_ip 127.0.0.1`, one CPU process each (gloo). The shared recipe trains with a partial freeze plan
and the replica check passes; a recipe that differs on node 1 is refused on both nodes first (the recipe
fingerprint check, all-gathered at start)."""

from __future__ import annotations

import json

import pytest

from conftest import sentiment_rows, write_csv, write_recipe
from helpers import REPO, launch_nodes


def test_ranks_with_different_recipes_are_named_with_their_keys():
    from hftl.engine.preflight import compare_recipes, recipe_fingerprint
    from hftl.errors import HftlError

    a, b = {"learning_rate": 0.01, "strategy": "partial"}, {"learning_rate": 0.02, "strategy": "partial"}
    rank = lambda values, path: {"fingerprint": recipe_fingerprint(values), "recipe": path, "host": "node", "values": values}
    compare_recipes([rank(a, "a.yaml"), rank(dict(a), "copy/a.yaml")])  # equal values: the path may differ
    with pytest.raises(HftlError, match=r"rank 1 runs `b.yaml`.*rank 0 runs `a.yaml`.*1 key\(s\): learning_rate: "
                                        r"0.01 on rank 0, 0.02 on rank 1"):
        compare_recipes([rank(a, "a.yaml"), rank(b, "b.yaml")])


@pytest.mark.slow
def test_two_nodes_on_one_machine_refuse_differing_recipes_then_train_in_sync(tmp_path, tiny_bert):
    train_csv = write_csv(tmp_path / "train.csv", sentiment_rows(64, seed=1))
    out = tmp_path / "run"
    common = dict(model_name_or_path=str(tiny_bert), train_file=str(train_csv), strategy="partial", unfrozen_groups=1,
                  learning_rate=1e-2, weight_decay=0.01, per_device_train_batch_size=8, output_dir=str(out))
    shared = write_recipe(tmp_path / "shared.yaml", **common)
    refused = tmp_path / "refused"  # where the differing recipes would train
    original = write_recipe(tmp_path / "original.yaml", **{**common, "output_dir": str(refused)})
    changed = write_recipe(tmp_path / "changed.yaml", **{**common, "output_dir": str(refused), "learning_rate": 2e-2})
    script = str(REPO / "tests" / "multinode_check.py")
    nodes = launch_nodes([[script, str(original), str(shared)], [script, str(changed), str(shared)]], tmp_path)

    for rank, node in enumerate(nodes):
        log = node.stdout + node.stderr
        assert node.returncode == 0, f"node {rank}:\n{log[-4000:]}"
        assert "multinode_check: differing recipe -> exit code 2" in log
        errors = [line for line in node.stderr.splitlines() if line.startswith("hftl: error: ")]
        assert len(errors) == 1 and "rank 1 runs `" in errors[0] and "changed.yaml" in errors[0], log[-3000:]
        assert "learning_rate: 0.01 on rank 0, 0.02 on rank 1" in errors[0] and "original.yaml" in errors[0]
    assert not refused.exists()  # stopped before the first file
    report = json.loads((out / "replica_check.json").read_text())
    assert report["world_size"] == 2 and report["in_sync"] is True
    assert report["fingerprints"][0] == report["fingerprints"][1]
