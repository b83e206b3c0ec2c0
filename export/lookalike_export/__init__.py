"""Turning framework weights into ONNX files and model-registry entries.

``lookalike-export`` (:mod:`.cli`) is the entry point. Modules: :mod:`.archs`
(the architectures and the feature networks built from them),
:mod:`.torchvision_nets` (networks whose state dicts match torchvision's),
:mod:`.weights` (finding and loading ``.pth`` files), :mod:`.torch_export`,
:mod:`.keras_export`, :mod:`.quantize` (fp16, int8), :mod:`.parity` (ONNX
Runtime vs framework on real photos), :mod:`.entry` (editing ``models.toml``)
and :mod:`.result`. The registry schema it writes is the server's own,
:mod:`lookalike_server.registry`.

A top-level package beside ``lookalike_server``: it needs the ``export``
extra (torch, onnx), and the server never imports it.
"""
