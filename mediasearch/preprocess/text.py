"""Text tokenisation with `tokenizers`, from the model manifest's ``tokenizer.json``.

A batch is padded to its longest query, never to the context length: the text tower costs about
6x more at 77 tokens than at a typical query's length. Queries longer than the context are
truncated, keeping the end token (CLIP pools the embedding at the end token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

from mediasearch.errors import InvalidInput, ModelError


class TextTokenizer:
    """Turns query strings into the text tower's ``input_ids`` (int64 ``[batch, seq]``)."""

    def __init__(self, tokenizer: Tokenizer, context_length: int, pad_id: int) -> None:
        self._tok = tokenizer
        self.context_length = context_length
        self.pad_id = pad_id
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=context_length)
        probe = self._tok.encode("a").ids
        if len(probe) < 3:
            raise ModelError(
                "tokenizer.json does not add start and end tokens around the text "
                "(CLIP pools at the end token); export the tokenizer with its post-processor"
            )
        self.bos_id, self.eos_id = probe[0], probe[-1]

    @classmethod
    def from_file(cls, path: str | Path, context_length: int, pad_id: int) -> TextTokenizer:
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for missing or bad files
            raise ModelError(f"cannot read tokenizer {path}: {exc}") from exc
        return cls(tok, context_length, pad_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of one query, with start and end tokens, truncated to the context length."""
        if not text or not text.strip():
            raise InvalidInput("query text is empty")
        ids = self._tok.encode(text).ids
        if ids[-1] != self.eos_id:  # a post-processor that truncates the end token away
            ids[-1] = self.eos_id
        return ids

    def encode_batch(self, texts: Sequence[str]) -> NDArray[np.int64]:
        """Token ids of a batch, padded with ``pad_id`` to the longest query in the batch."""
        if not texts:
            raise InvalidInput("no texts to encode")
        rows = [self.encode(t) for t in texts]
        return self.pad(rows)

    def pad(self, rows: Sequence[Sequence[int]]) -> NDArray[np.int64]:
        """Stack already-encoded rows, padded to the longest (used by micro-batchers)."""
        width = max(len(r) for r in rows)
        out = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out
