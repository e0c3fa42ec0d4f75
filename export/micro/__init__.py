"""The offline micro CLIP: a small ``transformers.CLIPModel`` trained here on generated scenes.

No CLIP weights can be downloaded on the development machines, so the demo and the semantic
end-to-end tests use this model: it learned the scene world of :mod:`mediasearch.export.micro.scenes`
(colours, shapes, counts, sizes and backgrounds; positions only weakly, see MODEL_CARD.md). Its
checkpoint folder is exported like any downloaded CLIP checkpoint.

- :mod:`mediasearch.export.micro.tokenizer`: the word-level ``tokenizer.json`` over the caption vocabulary.
- :mod:`mediasearch.export.micro.model`: the model's shape and the checkpoint writer.
- :mod:`mediasearch.export.micro.data`: pre-rendered training scenes and caption batches.
- :mod:`mediasearch.export.micro.train`: ``make train-micro``.
- :mod:`mediasearch.export.micro.retrieval`: precision@10 with pluggable encoders (torch-free).
- :mod:`mediasearch.export.micro.evaluate`: ``make eval-micro``, on the PyTorch checkpoint.
"""

from pathlib import Path

MODEL_DIR = Path(__file__).with_name("model")  # the committed checkpoint (installed as package data)
