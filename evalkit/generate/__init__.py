"""Generate stage: load a Flux pipeline per quantization backend, make seeded images, measure memory and latency.

Where to add a backend: `evalkit/quantizers/registry.py` (one frozen recipe in the registry).
"""
