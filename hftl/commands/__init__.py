"""What the CLI runs: `train` (and `plan`), `clip_eval` (CLIP's evaluation modes), `advise`,
`sweep`, `wise_ft`, and `card` (the model card every run writes)."""
