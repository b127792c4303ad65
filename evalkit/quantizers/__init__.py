"""Quantization libraries, one module (or folder) each, like diffusers' `quantizers/`.

- base.py: the `Library` record, the `Backend` recipe, and the `Quantizer` base every library implements.
- registry.py: the registry (`register_library`, `BACKENDS`, `LIBRARIES`) and the `--backends` grammar.
- reference.py, bitsandbytes.py, torchao.py, quanto.py, gguf/, layerwise.py, modelopt.py, sdnq.py, autoround.py,
  bfl.py, nunchaku.py: the libraries (docs/quantizers.md says what runs where and why).
- checkpoint.py: prequantized checkpoints as backends (`--backend NAME=PATH_OR_HUB_ID`), read by the library their
  quantization_config names.

Adding a library: a module defining LIBRARY, QUANTIZER and BACKENDS, and its name in registry.BUILTIN_LIBRARIES (or
register it from a plugin: docs/plugins.md). Nothing outside its module names the library (tests/test_libraries.py).
Importing this package imports no torch.
"""
