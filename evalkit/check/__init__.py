"""Release gate and run comparison: the check/compare stage.

Reads only the run directory (docs/run-directory.md) and writes `RUN_DIR/check/`:
  `evalkit check RUN_DIR --thresholds FILE.toml`   bounds per backend -> exit 0 pass, 1 violated, 2 cannot run
  `evalkit compare BASE_RUN CANDIDATE_RUN`          paired bootstrap over prompts -> deltas, flagged regressions

Both write JUnit XML (one testcase per backend and bound) and a Markdown summary for PR comments.
"""
