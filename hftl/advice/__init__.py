"""`hftl advise`'s two halves: `probe` measures the data, domain and task; `guide` turns the
measurements into a strategy (the decision guide of MISSION.md)."""
