"""A T5-style (SentencePiece-Unigram) tokenizer for the closed "moving shapes" vocabulary.

WanPipeline tokenizes with a T5/UMT5 tokenizer, and no hub tokenizer can be downloaded here, so we
build one from ``vocab.WORDS``: every vocabulary word is a single ``▁word`` piece; lower-case letters,
digits and common punctuation are kept as low-scoring single-character pieces so any other text still
tokenizes (into characters). Such text was never seen in training, so ``unknown_words`` /
``check_prompt`` name the words that fall outside the vocabulary instead of failing silently.
``save_pretrained`` writes the standard ``tokenizer.json`` + ``tokenizer_config.json``.
"""

from __future__ import annotations

import re
import string
import warnings

from worlds.shapes.vocab import WORDS

MAX_LENGTH = 32  # longest caption ("a red circle moving right and a blue square moving up") is 13 tokens
_SPLIT = re.compile(r"[\s,]+")


def tokenizer_pieces() -> list[tuple[str, float]]:
    """Unigram pieces with log-probabilities: T5 layout <pad>=0, </s>=1, <unk>=2, then the vocabulary.

    Whole words score -1 and single characters -10, so a vocabulary word is always one piece.
    """
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in pieces}
    for word in WORDS:
        piece = word if word == "," else "▁" + word
        if piece not in seen:
            pieces.append((piece, -1.0))
            seen.add(piece)
    for ch in ["▁"] + list(string.ascii_lowercase + string.digits + ".,;:!?'-"):
        for piece in (ch, "▁" + ch) if ch != "▁" else (ch,):
            if piece not in seen:
                pieces.append((piece, -10.0))
                seen.add(piece)
    return pieces


def build_video_tokenizer(model_max_length: int = MAX_LENGTH):
    """Return a ``transformers.T5Tokenizer`` (fast, tokenizers-backed) over the shapes vocabulary."""
    from transformers import T5Tokenizer

    tok = T5Tokenizer(vocab=tokenizer_pieces(), extra_ids=0, model_max_length=model_max_length)
    return tok


def unknown_words(text: str) -> list[str]:
    """Words of ``text`` (lower-cased, split on spaces and commas) that are not in ``vocab.WORDS``."""
    known = set(WORDS)
    return [w for w in _SPLIT.split(text.lower().strip()) if w and w not in known]


def check_prompt(text: str, strict: bool = False) -> list[str]:
    """Warn (or with ``strict`` raise ValueError) naming the prompt's out-of-vocabulary words.

    The model only ever saw captions built from ``vocab.WORDS``; other words tokenize into characters
    the text encoder never learned, so their effect is undefined. Returns the unknown words.
    """
    unknown = unknown_words(text)
    if unknown:
        msg = (
            f"prompt {text!r} contains words outside the moving-shapes vocabulary: {unknown}; "
            f"the model only knows {sorted(set(WORDS))}"
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return unknown
