"""Run on every node by tests/test_multinode.py (`accelerate launch --num_machines 2 ... multinode_check.py MINE SHARED`).

Two `hftl train` runs in one launch, through the CLI's own entry point (the same as `-m hftl train`), to
pay the launch's start-up once: first each node's own recipe MINE (node 1's differs: the recipe
fingerprint check must stop every rank with exit code 2 before anything is written), then the recipe
SHARED by all nodes, which must train.
"""

import sys

from hftl.cli import main

if __name__ == "__main__":
    mine, shared = sys.argv[1], sys.argv[2]
    refused = main(["train", mine])
    print(f"multinode_check: differing recipe -> exit code {refused}", flush=True)
    if refused != 2:
        raise SystemExit(1)
    raise SystemExit(main(["train", shared]))
