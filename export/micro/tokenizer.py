"""The micro CLIP's tokenizer: word level over the caption vocabulary, built with ``tokenizers``.

Text is NFKC-normalised and lowercased, punctuation is dropped, words split on whitespace; a word
outside the vocabulary becomes ``[UNK]``. The post-processor wraps every text in
``<|startoftext|>`` ... ``<|endoftext|>``, as the serving code requires (CLIP pools at the end
token). The end token has the highest id, like CLIP's, and is also the padding id.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from mediasearch.errors import ModelError
from mediasearch.export.micro.scenes import caption_words

UNK = "[UNK]"
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def build_tokenizer() -> Tokenizer:
    """The tokenizer: ``[UNK]`` = 0, the caption words in sorted order, then start and end."""
    tokens = [UNK, *caption_words(), BOS, EOS]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, tokens.index(BOS)), (EOS, tokens.index(EOS))],
    )
    return tok


def token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of ``token``, which ``tokenizer`` must have."""
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ModelError(f"the tokenizer has no {token!r} token")
    return found
