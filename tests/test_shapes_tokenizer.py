"""The closed-vocabulary CLIP tokenizer: one token per word, standard files, unknown words named."""

import json

import pytest
from transformers import CLIPTokenizer

from worlds.shapes.tokenizer import (
    MODEL_MAX_LENGTH,
    VocabCheckedTokenizer,
    build_tokenizer,
    check_prompt,
    save_vocab_files,
    unknown_words,
)
from worlds.shapes.vocab import WORDS


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_every_word_is_one_token(tok):
    ids = [tok(w, add_special_tokens=False).input_ids for w in WORDS]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(WORDS)


def test_caption_layout_with_padding(tok):
    enc = tok("a red circle, a blue square and a yellow triangle", padding="max_length",
              max_length=tok.model_max_length, truncation=True)
    toks = tok.convert_ids_to_tokens(enc.input_ids)
    assert len(toks) == MODEL_MAX_LENGTH == 16
    assert toks[:13] == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", ",</w>", "a</w>", "blue</w>",
                         "square</w>", "and</w>", "a</w>", "yellow</w>", "triangle</w>", "<|endoftext|>"]
    assert tok.pad_token_id == tok.eos_token_id  # SD 1.x convention


def test_unknown_words_are_named_not_dropped(tok):
    assert unknown_words("a Pink circle, and a teal cube") == ["pink", "teal", "cube"]
    assert unknown_words("a red circle, a blue square and a yellow triangle") == []
    with pytest.raises(ValueError, match=r"\['pink'\]"):
        check_prompt("a pink circle")
    with pytest.raises(ValueError, match="teal"):
        check_prompt(["a red circle", "a teal square"])
    # the plain BPE splits an unknown word into several pieces rather than mapping it to nothing
    assert len(tok("pink", add_special_tokens=False).input_ids) > 1


def test_round_trip_and_checked_class(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    save_vocab_files(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab["<|endoftext|>"] == tok.eos_token_id and len(vocab) == len(tok)
    assert (tmp_path / "merges.txt").read_text().startswith("#version")
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("a green triangle").input_ids == tok("a green triangle").input_ids
    assert again.model_max_length == MODEL_MAX_LENGTH
    checked = VocabCheckedTokenizer.from_pretrained(tmp_path)
    assert checked("a green triangle").input_ids == tok("a green triangle").input_ids
    with pytest.raises(ValueError, match="purpel"):
        checked(["a purpel circle"])


def test_style_model_tokenizer_accepts_style_words_and_shapes_sd_refuses_them(tmp_path):
    """The word list travels with the tokenizer folder: the style model's accepts "outline style",
    shapes-sd's (no word list: the 2D vocabulary) names the words and says which model knows them."""
    from pathlib import Path

    from worlds.shapes.styles import STYLES
    from worlds.shapes.tokenizer import WORDS_FILE, load_words, style_words

    words = style_words(STYLES)
    assert words[: len(WORDS)] == WORDS and words[len(WORDS):] == ("outline", "hatched", "dotted", "style")
    styled = build_tokenizer(words)
    styled.save_pretrained(tmp_path)
    save_vocab_files(tmp_path, words)
    assert load_words(tmp_path) == words
    checked = VocabCheckedTokenizer.from_pretrained(tmp_path)
    prompt = "a red circle, a blue square and a yellow triangle, outline style"  # the longest caption
    ids = checked(prompt, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True).input_ids
    assert ids[-1] == checked.eos_token_id and ids.count(checked.eos_token_id) == 1  # fits, not cut
    assert checked.convert_ids_to_tokens(ids[-3:-1]) == ["outline</w>", "style</w>"]
    with pytest.raises(ValueError, match=r"\['sketchy'\]"):
        checked("a red circle, sketchy style")

    shipped = Path(__file__).resolve().parents[1] / "assets" / "shapes-sd" / "tokenizer"
    assert not (shipped / WORDS_FILE).exists() and load_words(shipped) == WORDS
    old = VocabCheckedTokenizer.from_pretrained(shipped)
    assert old("a red circle").input_ids == build_tokenizer()("a red circle").input_ids
    with pytest.raises(ValueError, match=r"\['outline', 'style'\].*shapes-style-sd"):
        old("a red circle, outline style")
    with pytest.raises(ValueError, match="outline"):
        check_prompt("a red circle, outline style")  # the 2D vocabulary by default
    check_prompt("a red circle, outline style", words)


def test_a_broken_word_list_is_refused(tmp_path):
    from worlds.shapes.tokenizer import WORDS_FILE, load_words

    (tmp_path / WORDS_FILE).write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list of words"):
        load_words(tmp_path)
