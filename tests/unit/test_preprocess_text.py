"""The shared tokeniser against transformers' CLIPTokenizer built from the same vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mediasearch.errors import InvalidInput, ModelError
from mediasearch.preprocess import TextTokenizer

TEXTS = [
    "yellow flowers on a table",
    "A photo of a CAT!!",
    "two small blue squares on a yellow background",
    "  extra   spaces\tand\nnewlines ",
    "café naïve résumé — “quotes” and emoji 🙂",
    "numbers 1234567 and under_scores, hyphen-ated words",
    "x",
    " ".join(["a very long query"] * 40),  # far beyond 77 tokens: truncated, end token kept
]


@pytest.fixture(scope="module")
def ours(tiny_checkpoint: Path) -> TextTokenizer:
    return TextTokenizer.from_file(tiny_checkpoint / "tokenizer.json", context_length=77, pad_id=49407)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tiny_checkpoint))


@pytest.mark.parametrize("text", TEXTS)
def test_token_ids_identical_to_clip_tokenizer(text: str, ours: TextTokenizer, reference: object) -> None:
    expected = reference(text, truncation=True, max_length=77)["input_ids"]  # type: ignore[operator]
    assert ours.encode(text) == expected


def test_known_ids_of_clip_vocabulary(ours: TextTokenizer) -> None:
    # Fixed by CLIP's published vocabulary: <start> a photo of a cat <end>.
    assert ours.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_long_text_truncated_to_context_keeping_end_token(ours: TextTokenizer) -> None:
    ids = ours.encode(" ".join(["word"] * 200))
    assert len(ids) == 77 and ids[0] == ours.bos_id and ids[-1] == ours.eos_id


def test_batch_padded_to_longest_query_not_to_context(ours: TextTokenizer) -> None:
    batch = ours.encode_batch(["a cat", "a photo of a dog on the grass"])
    assert batch.dtype == np.int64 and batch.shape == (2, 10)
    assert list(batch[0, 4:]) == [49407] * 6


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_query_refused(text: str, ours: TextTokenizer) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        ours.encode(text)


def test_unreadable_tokenizer_file_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="cannot read tokenizer"):
        TextTokenizer.from_file(bad, 77, 0)
