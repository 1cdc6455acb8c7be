"""Checkpoint file formats, below everything that builds networks from them.

- :mod:`ibot.formats.ours`: our ``.safetensors`` files (tensors plus JSON metadata with a ``kind``);
- :mod:`ibot.formats.official`: the official ``.pth`` containers, read with ``weights_only=True``.
"""
