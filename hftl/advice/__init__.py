"""`hftl advise`'s halves: `probe` measures the data, domain and task on frozen features; `baseline` the
classical model beside it; `guide` turns the measurements into a strategy (the decision guide of
MISSION.md), `measured` lets measurements overrule its rules, `budget` sizes the training and
`resolution` chooses an input size for images."""
