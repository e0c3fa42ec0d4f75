"""The offline micro CLIP: a small ``transformers.CLIPModel`` trained here on generated scenes.

No CLIP weights can be downloaded on the development machines, so the demo and the semantic
end-to-end tests use this model: it learned the scene world of :mod:`mediasearch.scenes`
(colours, shapes, counts, sizes and backgrounds; positions only weakly, see MODEL_CARD.md). Its
checkpoint folder is exported like any downloaded CLIP checkpoint.

- :mod:`export.micro.tokenizer`: the word-level ``tokenizer.json`` over the caption vocabulary.
- :mod:`export.micro.model`: the model's shape and the checkpoint writer.
- :mod:`export.micro.data`: pre-rendered training scenes and caption batches.
- :mod:`export.micro.train`: ``python -m export.micro.train --out export/micro/model --seed 0``.
- :mod:`export.micro.retrieval`: precision@10 with pluggable encoders (torch-free).
- :mod:`export.micro.evaluate`: ``python -m export.micro.evaluate``, on the PyTorch checkpoint.
"""
