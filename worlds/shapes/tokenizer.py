"""A CLIP byte-level BPE tokenizer built from the shapes vocabulary, with no download.

Base symbols are CLIP's 256 byte characters and their end-of-word (``</w>``) forms, so any text
still tokenizes (into characters). Merges are grown greedily, word by word, until each vocabulary
word is a single symbol; a new merge always gets the highest rank so words finished earlier never
change. Unknown words would therefore be split silently into characters: ``check_prompt`` names
them, and ``VocabCheckedTokenizer`` (used by ``load_pipeline``) raises on them.

A model's word list travels with it: ``save_vocab_files`` writes ``shapes_words.json`` beside the
tokenizer files and ``VocabCheckedTokenizer.from_pretrained`` checks prompts against it, so the
style model (``assets/shapes-style-sd``, words + ``style_words``) accepts "..., outline style" while
a folder without the file (``assets/shapes-sd``) keeps the 2D vocabulary ``WORDS`` and refuses it.

>>> tok = build_tokenizer()
>>> ids = word_ids(tok, ["a", "red", "circle"])
>>> tok("a red circle").input_ids == [tok.bos_token_id, *ids, tok.eos_token_id]
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from transformers import CLIPTokenizer

from .styles import STYLE_WORDS
from .vocab import WORDS

# Longest caption: "a red circle , a blue square and a yellow triangle" = 11 words + BOS + EOS.
# A short context leaves few padding tokens to carry the caption in cross-attention.
MODEL_MAX_LENGTH = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS_FILE = "shapes_words.json"  # the model's own word list, beside its tokenizer files
# CLIP's pre-tokenizer: words, numbers and single punctuation marks.
_WORD_RE = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the lowest-ranked adjacent pair."""
    while len(symbols) > 1:
        adjacent = zip(symbols, symbols[1:], strict=False)
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(adjacent)]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def build_vocab_and_merges(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-format vocabulary (byte symbols, their </w> forms, merged words, BOS, EOS) and merges."""
    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        encoded = "".join(bytes_to_unicode()[b] for b in word.encode("utf-8"))
        symbols = list(encoded[:-1]) + [encoded[-1] + "</w>"]
        symbols = _apply_merges(symbols, ranks)
        while len(symbols) > 1:  # merge left to right; each new merge ranks last
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
            symbols = [pair[0] + pair[1]] + symbols[2:]
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    return vocab, merges


def build_tokenizer(
    words: tuple[str, ...] = WORDS, model_max_length: int = MODEL_MAX_LENGTH
) -> CLIPTokenizer:
    """A CLIPTokenizer with one token per vocabulary word (pad = EOS, as in SD 1.x)."""
    vocab, merges = build_vocab_and_merges(words)
    tok = CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=model_max_length)
    for w in words:  # the build's own invariant: one token per word
        ids = tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"vocabulary word {w!r} tokenized into {len(ids)} tokens")
    return tok


def style_words(styles: Sequence[str]) -> tuple[str, ...]:
    """The caption words a model trained on ``styles`` knows: ``WORDS``, then its style words.

    >>> style_words(["flat"]) == WORDS
    True
    >>> style_words(["flat", "outline", "hatched"])[len(WORDS):]
    ('outline', 'hatched', 'style')
    """
    drawn = [w for w in STYLE_WORDS if w in styles]  # flat has no word
    return WORDS + tuple(drawn) + ("style",) if drawn else WORDS


def save_vocab_files(directory: str | Path, words: tuple[str, ...] = WORDS) -> None:
    """Write the classic ``vocab.json`` + ``merges.txt`` pair (readable by any CLIP tokenizer) and the
    word list ``shapes_words.json`` that ``VocabCheckedTokenizer.from_pretrained`` checks prompts with."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(words)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / WORDS_FILE).write_text(json.dumps(list(words)) + "\n")


def load_words(directory: str | Path) -> tuple[str, ...]:
    """The word list saved with a tokenizer folder; ``WORDS`` for folders written before it existed."""
    path = Path(directory) / WORDS_FILE
    if not path.exists():
        return WORDS
    words = json.loads(path.read_text())
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{path} must hold a JSON list of words, got {words!r}; re-export the model")
    return tuple(words)


def split_words(prompt: str) -> list[str]:
    """The words CLIP's pre-tokenizer sees (lower-cased, punctuation split off)."""
    return _WORD_RE.findall(prompt.lower())


def unknown_words(prompt: str, words: tuple[str, ...] = WORDS) -> list[str]:
    """Words of ``prompt`` outside the vocabulary, in order of appearance, without repeats."""
    known = set(words)
    return list(dict.fromkeys(w for w in split_words(prompt) if w not in known))


def check_prompt(prompt: str | list[str], words: tuple[str, ...] = WORDS) -> None:
    """Raise ValueError naming every word outside the vocabulary (they would become characters)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    bad = list(dict.fromkeys(w for p in prompts for w in unknown_words(p, words)))
    if not bad:
        return
    styled = "style" in words
    example = "a red circle and a blue square" + (", outline style" if styled else "")
    hint = ""
    if not styled and any(w in STYLE_WORDS for w in bad):
        hint = (" Drawing-style words need a model trained on styles: load assets/shapes-style-sd "
                "(python -m worlds.shapes.train --styles flat,outline,hatched,dotted).")
    raise ValueError(
        f"words outside the shapes vocabulary: {bad}. The model knows only {list(words)}; "
        f'write captions like "{example}".{hint}'
    )


def word_ids(tok: CLIPTokenizer, words: list[str]) -> list[int]:
    """Token id of each vocabulary word."""
    return [tok.convert_tokens_to_ids(w + "</w>") for w in words]


class VocabCheckedTokenizer(CLIPTokenizer):
    """CLIPTokenizer that refuses prompts with out-of-vocabulary words instead of splitting them.

    The saved files stay standard CLIP files; ``load_pipeline`` swaps this class in after loading.
    ``words`` is the model's own list (``shapes_words.json`` of the folder it was loaded from).
    """

    words: tuple[str, ...] = WORDS

    @classmethod
    def from_pretrained(cls, path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN206 - base signature
        tok = super().from_pretrained(path, *args, **kwargs)
        folder = Path(path) / kwargs.get("subfolder", "")
        tok.words = load_words(folder) if folder.is_dir() else WORDS
        return tok

    def __call__(self, text=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - same signature as the base
        if text is not None:
            prompts = text if isinstance(text, str) else [t for t in text if isinstance(t, str)]
            check_prompt(prompts, self.words)
        return super().__call__(text, *args, **kwargs)
