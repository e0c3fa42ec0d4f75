"""CLIP checkpoint -> ONNX text and vision towers -> Triton model repository.

The only package that imports torch and transformers. Entry point: :func:`export_model`
(``mediasearch export``). Modules:

- :mod:`mediasearch.export.checkpoint`: load a CLIP checkpoint (local directory or hub id), its
  tokenizer and its image contract, with clear errors for what cannot be loaded here.
- :mod:`mediasearch.export.towers`: the two towers as ONNX graphs, and the parity gate against PyTorch.
- :mod:`mediasearch.export.triton_config`: ``config.pbtxt`` in its flavours (GPU onnxruntime, CPU
  python, TensorRT) from the manifest's tensor specs, and the CPU flavour's ``model.py``.
- :mod:`mediasearch.export.dali`: the optional GPU-decode flavour (``--dali``): a DALI preprocessing
  model and the ``<name>_vision_bytes`` ensemble that takes encoded image bytes.
- :mod:`mediasearch.export.publish`: staging and the atomic publish into the model repository.
"""

from mediasearch.export.pipeline import ExportReport, export_model

__all__ = ["ExportReport", "export_model"]
