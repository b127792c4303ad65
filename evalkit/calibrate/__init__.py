"""The calibrate stage: measure the reference's own noise floor (calibration.json) so gates can bound relative to it.

`evalkit calibrate RUN_DIR` (cli.py) -> stage.run_calibration -> perturbations (what to regenerate under) and
floor (from per-perturbation paired metric records to one floor per metric). Importing this package loads no torch.
"""
