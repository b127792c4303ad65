"""Generate stage: load a pipeline of a model family per quantization backend, make seeded images, measure memory
and latency.

Where to add a backend: a library module in `evalkit/quantizers/` (docs/quantizers.md); a model family:
a module in `evalkit/families/` (docs/models.md).
"""
