"""Turning framework weights into ONNX files and model-registry entries.

``lookalike-export`` (:mod:`.cli`) is the entry point. Modules: :mod:`.archs`
(networks whose state dicts match torchvision's), :mod:`.torch_export`,
:mod:`.keras_export`, :mod:`.quantize` (fp16, int8), :mod:`.parity` (ONNX
Runtime vs framework on real photos) and :mod:`.entry` (registry TOML).

Needs the ``export`` extra (torch); the server never imports this package.
"""
