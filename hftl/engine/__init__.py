"""The transfer engine: layer groups -> freeze plan -> lr plan -> Trainer.

It knows models, parameters and the Trainer, and nothing of recipes, tasks or commands: its
functions take plain values (or a small typed spec of their own), so any training script can use
them. Modules: `layers` (ordered layer groups), `towers` (per-tower plans of dual encoders),
`contrastive` (features gathered across ranks, SigLIP's sigmoid loss), `freeze` (FreezePlan),
`optim` (param groups with explicit lrs), `phases` (LP-FT and gradual unfreezing), `plan` (the
table, CSV and chart), `transfer` (TransferPlan, the public plan object), `features` (cached
backbone outputs), `lora` (peft adapters as a strategy), `pooling`, `precision` (precisions known to
break a family), `preflight` (output folder,
resume, integrations, the Hub), `run_folder` (the run marker), `checkpoint_files` (checkpoints that
read back whole), `tracking` (per-group lr series for report_to's trackers) and `trainer` (TransferTrainer).
"""
