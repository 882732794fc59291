"""The strategy names, apart from the freeze code that implements them: the recipe's keys and their
validation read them without importing torch (engine/freeze.py, engine/towers.py use them)."""

# feature_extraction: only the head trains; partial: the top groups and the head; full: everything;
# lora: the backbone frozen here, adapters added later (engine/lora.py)
STRATEGIES = ("feature_extraction", "partial", "full", "lora")
TOWER_STRATEGIES = tuple(s for s in STRATEGIES if s != "lora")  # adapters are planned for one tower only
