"""Release gate and run comparison: the check/compare stage.

Reads only the run directory (docs/run-directory.md) and writes `RUN_DIR/check/`:
  `evalkit check RUN_DIR --thresholds FILE.toml`   bounds per backend -> exit 0 pass, 1 violated, 2 cannot run
  `evalkit compare BASE_RUN CANDIDATE_RUN`          paired bootstrap over prompts -> deltas, flagged regressions

Modules: inputs (read and validate a run; verify its images), thresholds (the TOML), noise (calibration.json),
measure (the number a bound judges), gate (check), compare and bootstrap (compare), results (the values: Verdict,
Outcome, Finding, Report), console/markdown/junit (renderings of those values), outputs (where and over what the
renderings may be written), cli.
"""
