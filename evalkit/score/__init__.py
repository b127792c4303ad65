"""The score stage: every backend's images against the reference images, with every registered metric.

The metrics themselves live in evalkit/metrics/ (one module each, plus the registry); weights in evalkit/weights/.
Here: stage.py (the run), summary.py (records with CIs), distributed.py (ranks), cache.py (content-keyed values),
run_inputs.py and score_key.py (what a score depends on), images.py and decode.py (decoding), compare.py
(`compare-images`), api.py and cli.py.

This package's __init__ stays import-light: decode worker processes import evalkit.score.images only.
"""
