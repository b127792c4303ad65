"""evalkit: measure what quantizing a diffusion model costs in image quality, and what it buys in memory and speed.

Stages share one contract, the run directory (docs/run-directory.md):
generate -> score -> report -> check/compare.
"""

__version__ = "0.1.0"
