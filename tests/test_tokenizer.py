"""Tokenizer: exact round trip, GPT-4 style splitting, special tokens, HF interop."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from gptlab.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer, train_tokenizer_from_source

CORPUS = [
    "The capital of France is Paris. It has 2148271 inhabitants (2020).",
    "法国的首都是巴黎。巴黎有两百万人口。",
    "Café, naïve, déjà vu -- e\u0301 with a combining accent. Ünïcödé!",
    "Emoji: 😀 👍🏽 👨‍👩‍👧 🇫🇷 and tabs\tand\r\nwindows newlines.",
    "def f(x):\n    return x ** 2 + 314159  # code\n",
    "Numbers 1, 12, 123, 1234, 12345 and 3.14159; I'm sure they're fine, we'll see.",
]

MESSAGES = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France? 12345"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "首都?"},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS * 20, vocab_size=600)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok.save(d)
    return d


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_arbitrary_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s


@pytest.mark.parametrize("s", [
    "", " ", "\n\n\n", "\x00\x01\x7f\x1b[0m", "e\u0301\u0302\u0303", "👨‍👩‍👧‍👦 🏳️‍🌈", "日本語のテキスト",
    "\ufeffBOM", "\U0010ffff\ue000", "   leading and trailing   ", "a\r\nb\rc\n", "x" * 5000,
])
def test_round_trip_edge_cases(tok, s):
    assert tok.decode(tok.encode(s)) == s


def test_batch_matches_single(tok):
    assert tok.encode_batch(CORPUS) == [tok.encode(t) for t in CORPUS]


def test_digits_split_in_groups_of_at_most_3(tok):
    ids = tok.encode("x 1234567890 y 12345678901234567890")
    pieces = [tok.decode([i]) for i in ids]
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(p.isdigit() and len(p) <= 3 for p in digit_pieces), pieces
    assert "".join(digit_pieces) == "1234567890" + "12345678901234567890"


def test_special_tokens_ids_and_single_tokens(tok):
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i
        assert tok.encode(name) == [i]
    assert (tok.eos_id, tok.im_start_id, tok.im_end_id, tok.pad_id) == (0, 1, 2, 3)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n")
    assert ids[0] == 1 and 2 in ids
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi\n"


def test_vocab_size(tok):
    assert 264 < tok.vocab_size <= 600
    with pytest.raises(ValueError):
        train_tokenizer(CORPUS, vocab_size=100)


def test_chat_template_rendering(tok):
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in MESSAGES)
    assert text == expected + "<|im_start|>assistant\n"
    assert tok.apply_chat_template(MESSAGES) == expected


def test_save_load_round_trip(tok, saved):
    t2 = Tokenizer.load(saved)
    assert t2.vocab_size == tok.vocab_size
    assert (t2.eos_id, t2.bos_id, t2.pad_id, t2.im_start_id, t2.im_end_id) == (0, 0, 3, 1, 2)
    assert t2.encode_batch(CORPUS) == tok.encode_batch(CORPUS)
    assert t2.chat_template == tok.chat_template


def test_auto_tokenizer_same_ids_and_template(tok, saved):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(saved)
    rendered = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
    for text in CORPUS + [rendered, "<|endoftext|>a<|pad|>"]:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert hf.decode(ids) == tok.decode(ids)
    assert hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == rendered
    assert hf.apply_chat_template(MESSAGES, tokenize=False) == tok.apply_chat_template(MESSAGES)
    assert (hf.eos_token_id, hf.pad_token_id) == (tok.eos_id, tok.pad_id)
    cfg = json.loads((saved / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "model_max_length" in cfg


def _plain_hf_dir(tmp_path, config: dict, generation_config: dict | None = None):
    """An HF tokenizer dir as a Llama-family model ships it (own specials, own template)."""
    hf = HFTokenizer.from_str(train_tokenizer(CORPUS, vocab_size=300).to_json())
    hf.add_special_tokens(["<s>", "</s>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    if generation_config is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation_config))
    return tmp_path


LLAMA_TEMPLATE = ("{% for m in messages %}{{ bos_token + '[' + m['role'] + '] ' + m['content'] + eos_token }}"
                  "{% endfor %}")


def test_load_plain_hf_dir_keeps_its_eos_and_template(tmp_path):
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
           "eos_token": {"content": "</s>", "special": True}, "chat_template": LLAMA_TEMPLATE}
    d = _plain_hf_dir(tmp_path, cfg)
    t = Tokenizer.load(d)
    assert t.eos_id == t.token_to_id("</s>") and t.bos_id == t.token_to_id("<s>")
    assert t.pad_id == t.eos_id  # no pad token: pad with eos
    assert t.apply_chat_template([{"role": "user", "content": "hi"}]) == "<s>[user] hi</s>"
    out = tmp_path / "resaved"
    t.save(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == LLAMA_TEMPLATE
    assert Tokenizer.load(out).encode("hello </s>") == t.encode("hello </s>")


def test_load_plain_hf_dir_eos_from_generation_config(tmp_path):
    d = _plain_hf_dir(tmp_path, {"tokenizer_class": "PreTrainedTokenizerFast"}, {"eos_token_id": [7, 2]})
    (d / "chat_template.jinja").write_text(LLAMA_TEMPLATE)
    t = Tokenizer.load(d)
    assert t.eos_id == 7
    assert t.chat_template == LLAMA_TEMPLATE


def test_load_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_train_from_source(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 5))
    t = train_tokenizer_from_source(src, tmp_path / "tok", vocab_size=400, max_chars=2000)
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert Tokenizer.load(tmp_path / "tok").encode(CORPUS[0]) == t.encode(CORPUS[0])
