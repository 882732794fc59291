"""What the CLI runs. `train` (and `plan`) is one outline for every run (`outline`: Run, Inputs,
Mode, Extra): the Trainer mode here, CLIP's evaluation modes in `clip_eval`, the optional parts
around the fit in `extras`. Beside it: `advise`, `sweep`, `wise_ft`, and `card` (the model card)."""
