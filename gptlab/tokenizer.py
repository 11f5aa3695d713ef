"""Byte-level BPE tokenizer: training, encoding, ChatML chat template, HF interop.

The tokenizer is a thin wrapper around a Hugging Face `tokenizers.Tokenizer`, so what is
saved (`tokenizer.json` + `tokenizer_config.json`) is what `transformers.AutoTokenizer`
loads, and a plain HF tokenizer directory (Llama, SmolLM2, ...) loads here unchanged.

Training (`train_tokenizer`) follows GPT-4 (tiktoken's cl100k_base): text is first split
with a regex into words, numbers (groups of at most 3 digits), punctuation runs and
whitespace, then each piece is mapped to bytes (GPT-2's ByteLevel with `use_regex=False`,
since the split already happened), so every byte sequence -- any Unicode string -- is
representable and `decode(encode(s)) == s` exactly. BPE then merges frequent byte pairs.

Special tokens get ids 0..7 (`SPECIAL_TOKENS`); ChatML uses `<|im_start|>` / `<|im_end|>`:
`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|pad|>",
    "<|reserved_0|>",
    "<|reserved_1|>",
    "<|reserved_2|>",
    "<|reserved_3|>",
]

# GPT-4 (cl100k_base) pre-tokenization, with digits in groups of at most 3.
# Possessive quantifiers (?+, ++) are supported by the Oniguruma engine `tokenizers` uses.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Seconds before the training progress bar appears, so quick runs print nothing.
_PROGRESS_DELAY_S = 2.0


def _token_str(value: Any) -> str | None:
    """tokenizer_config stores special tokens as "str" or {"content": "str", ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Encode/decode text; knows the special token ids and the chat template.

    `encode` adds no special tokens (no BOS/EOS), but special-token *strings* that occur in
    the text (e.g. a literal "<|im_end|>") are recognized and encoded as their single id --
    this is how a chat template's own text is tokenized. `encode_text` is for content (what
    a user, system or assistant message says): special-token strings in it are ordinary
    text, so a message cannot forge a turn (gptlab.chat renders messages that way).
    """

    def __init__(self, hf: HFTokenizer, config: dict | None = None, generation_config: dict | None = None):
        self._tok = hf
        self.config: dict = dict(config or {})
        self._gen = generation_config or {}
        self.chat_template: str = self.config.get("chat_template") or CHATML_TEMPLATE
        self.eos_id: int = self._resolve_eos()
        self.bos_id: int | None = self._special_id("bos_token")
        self.im_start_id: int | None = self._tok.token_to_id("<|im_start|>")
        self.im_end_id: int | None = self._tok.token_to_id("<|im_end|>")
        pad = self._special_id("pad_token")
        # A model without a pad token pads with eos (the usual HF convention).
        self.pad_id: int = pad if pad is not None else self.eos_id

    # ---- special ids -------------------------------------------------------------------
    def _special_id(self, key: str) -> int | None:
        name = _token_str(self.config.get(key))
        return self._tok.token_to_id(name) if name else None

    def _resolve_eos(self) -> int:
        """eos: tokenizer_config's eos_token, else generation_config's, else <|endoftext|>."""
        eos = self._special_id("eos_token")
        if eos is not None:
            return eos
        gen_eos = self._gen.get("eos_token_id")
        if isinstance(gen_eos, list) and gen_eos:
            gen_eos = gen_eos[0]
        if isinstance(gen_eos, int):
            return gen_eos
        for name in ("<|endoftext|>", "</s>", "<|end_of_text|>"):
            if (i := self._tok.token_to_id(name)) is not None:
                return i
        raise ValueError("cannot determine the eos token: set eos_token in tokenizer_config.json")

    # ---- encode / decode ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_text(self, text: str) -> list[int]:
        """Ids of ``text`` with special-token strings read as plain text: a literal
        "<|im_end|>" becomes the ids of "<", "|", "im", ... never the control token."""
        return self._plain().encode(text, add_special_tokens=False).ids

    def encode_text_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._plain().encode_batch(list(texts), add_special_tokens=False)]

    def _plain(self) -> HFTokenizer:
        # a second copy, since encode_special_tokens is a setting of the whole tokenizer object
        if getattr(self, "_plain_tok", None) is None:
            plain = HFTokenizer.from_str(self._tok.to_str())
            plain.encode_special_tokens = True
            self._plain_tok = plain
        return self._plain_tok

    def control_ids(self) -> set[int]:
        """Ids of the special added tokens (<|im_start|>, <|im_end|>, <|endoftext|>, ...)."""
        return {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def to_json(self) -> str:
        """The tokenizer.json text (hash it to fingerprint the tokenizer)."""
        return self._tok.to_str()

    # ---- chat --------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """Render messages with the tokenizer's chat template, as transformers does."""
        special = {k: _token_str(self.config.get(k)) or "" for k in ("bos_token", "eos_token")}
        return _compiled_template(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special
        )

    # ---- save / load -------------------------------------------------------------------
    def save(self, out_dir: str | Path, model_max_length: int | None = None) -> Path:
        """Write tokenizer.json and tokenizer_config.json (loadable by AutoTokenizer)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out / "tokenizer.json"))
        cfg = dict(self.config)
        cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        cfg["chat_template"] = self.chat_template
        if model_max_length is not None:
            cfg["model_max_length"] = int(model_max_length)
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        # transformers >= 4.47 may have saved the template as a separate file; ours is in
        # the config, so a stale file from an imported tokenizer must not shadow it.
        (out / "chat_template.jinja").unlink(missing_ok=True)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load a directory written by `save`, or any HF dir with a tokenizer.json."""
        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.is_file():
            raise FileNotFoundError(
                f"{tj} not found: gptlab needs a fast-tokenizer tokenizer.json "
                "(sentencepiece-only tokenizer.model directories are not supported)"
            )
        cfg = _read_json(path / "tokenizer_config.json")
        if "chat_template" not in cfg and (path / "chat_template.jinja").is_file():
            cfg["chat_template"] = (path / "chat_template.jinja").read_text()
        cfg.pop("added_tokens_decoder", None)  # tokenizer.json is the source of truth
        return cls(HFTokenizer.from_file(str(tj)), cfg, _read_json(path / "generation_config.json"))


def _read_json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def _native_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>",
        # Byte-level BPE never needs unk; HF expects the key, so point it at endoftext.
        "unk_token": "<|endoftext|>",
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
    }


def _new_bpe() -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _with_progress(texts: Iterable[str], total_chars: int | None) -> Iterator[str]:
    """Yield texts while a tqdm bar counts characters; it appears only if training is slow."""
    from tqdm.auto import tqdm

    with tqdm(total=total_chars, unit="char", unit_scale=True, desc="tokenizer",
              delay=_PROGRESS_DELAY_S) as bar:
        for t in texts:
            bar.update(len(t))
            yield t


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, *,
                    min_frequency: int = 2, progress: bool = True,
                    total_chars: int | None = None) -> Tokenizer:
    """Train a byte-level BPE on `texts`; special tokens get ids 0..7, then 256 bytes.

    The vocabulary can end up smaller than `vocab_size` if the text has too few pairs.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 256}, got {vocab_size}")
    tok = _new_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    it = _with_progress(texts, total_chars) if progress else iter(texts)
    tok.train_from_iterator(it, trainer=trainer)
    for i, name in enumerate(SPECIAL_TOKENS):  # the contract: specials are ids 0..7
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, expected {i}")
    return Tokenizer(tok, _native_config())


def _take_chars(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Yield texts until max_chars characters in total (the last one truncated)."""
    left = max_chars
    for t in texts:
        if left <= 0:
            return
        yield t[:left]
        left -= len(t)


def train_tokenizer_from_source(source: str | Path, out_dir: str | Path, vocab_size: int = 4096,
                                max_chars: int = 2_000_000_000, *, text_field: str = "text",
                                doc_cap: int = 10_000) -> Tokenizer:
    """Train on the first `max_chars` characters of `source` (see `iter_texts`), save to out_dir.

    Each document is capped at `doc_cap` characters (as nanochat does): very long
    documents add little to the statistics and slow the pre-tokenizer down.
    """
    from gptlab.data.loaders import iter_texts  # deferred: loaders imports torch

    texts = (t[:doc_cap] for t in iter_texts(source, text_field=text_field))
    tok = train_tokenizer(_take_chars(texts, max_chars), vocab_size)
    tok.save(out_dir)
    return tok


@functools.lru_cache(maxsize=16)
def _compiled_template(source: str):
    """A chat template compiled once: compiling costs ~1000x a render, and SFT renders every
    conversation several times (rendering 12,000 SmolLM2 conversations took minutes)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
