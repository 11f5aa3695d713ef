"""gptlab.chat: ChatML rendering, loss masks, imported templates, batching, history trimming.

The mask is checked token by token against an independent reading of the ids (a small
ChatML parser), the ids against transformers' own ``apply_chat_template``, and batching
by comparing a conversation's logits inside a padded batch with its logits alone.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gptlab.chat import (
    IGNORE_INDEX, Example, chat_segments, collate, fit_examples, fit_history,
    length_grouped_batches, render_chat, render_prompt, render_records, stop_token_ids,
    text_examples,
)
from gptlab.tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer) -> Tokenizer:
    return Tokenizer.load(tiny_tokenizer)


CONV = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "where does alice live?"},
    {"role": "assistant", "content": "alice lives in paris."},
    {"role": "user", "content": "and what does she eat?\nbe precise"},
    {"role": "assistant", "content": "she eats bread, every day.\n"},
]


def _parse_chatml(tok: Tokenizer, ids: list[int]) -> list[bool]:
    """Independent of gptlab.chat: walk the ids as a ChatML stream; a token should be
    trained iff it is assistant content or the <|im_end|> closing an assistant turn."""
    expected, role, state, header = [], None, "out", []
    for i in ids:
        if i == tok.im_start_id:
            state, header = "header", []
            expected.append(False)
        elif state == "header":
            header.append(i)
            expected.append(False)
            if tok.decode(header).endswith("\n"):
                role, state = tok.decode(header)[:-1], "content"
        elif state == "content":
            expected.append(role == "assistant")
            if i == tok.im_end_id:
                state = "out"
        else:  # the newline between messages
            assert tok.decode([i]) == "\n"
            expected.append(False)
    return expected


def test_loss_mask_token_by_token_multi_turn_with_system(tok, tiny_tokenizer):
    ids, mask = render_chat(tok, CONV)
    assert len(ids) == len(mask)
    assert [bool(m) for m in mask] == _parse_chatml(tok, ids)
    # the ids are the template's text, tokenized as transformers does
    text = tok.apply_chat_template(CONV)
    assert text.startswith("<|im_start|>system\nAnswer in one short sentence.<|im_end|>\n")
    assert ids == tok.encode(text)
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    assert ids == list(hf.apply_chat_template(CONV, tokenize=True, return_dict=False))
    # trained runs = exactly each assistant content + its <|im_end|>, nothing around them
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    assert [tok.decode(r) for r in runs] == ["alice lives in paris.<|im_end|>",
                                            "she eats bread, every day.\n<|im_end|>"]
    im_ends = [k for k, i in enumerate(ids) if i == tok.im_end_id]
    assert [mask[k] for k in im_ends] == [0, 0, 1, 0, 1]
    assert all(mask[k + 1] == 0 for k in im_ends if k + 1 < len(ids))  # never the "\n"


def test_masked_turns_are_context_only(tok):
    rec = {"messages": [
        {"role": "user", "content": "capital of peru?"},
        {"role": "assistant", "content": "the capital of peru is rome."},
        {"role": "user", "content": "that's not correct."},
        {"role": "assistant", "content": "sorry, I was wrong. it is lima."}],
        "meta": {"kind": "pushback_admit", "masked_turns": [1]}}
    (ids, mask), = render_records(tok, [rec])
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "sorry, I was wrong. it is lima.<|im_end|>"
    assert "rome" in tok.decode(ids)  # still in the context
    ids2, mask2 = render_chat(tok, rec["messages"])
    assert ids2 == ids and sum(mask2) > sum(mask)


def test_generation_prompt_is_the_training_prefix(tok):
    prompt = render_prompt(tok, CONV[:4])
    assert tok.decode(prompt).endswith("<|im_end|>\n<|im_start|>assistant\n")
    full, mask = render_chat(tok, CONV)
    assert full[:len(prompt)] == prompt and mask[len(prompt)] == 1 and mask[len(prompt) - 1] == 0
    assert stop_token_ids(tok) == sorted({tok.eos_id, tok.im_end_id})


@pytest.mark.parametrize("template,lead,turn_end", [
    # Zephyr-like: role tags that are plain text, eos after each message
    ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}"
     "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
     "", "<|endoftext|>"),
    # Llama-2-like: bos, [INST] blocks, a space before eos, content trimmed
    ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] | trim + ' [/INST]' }}"
     "{% elif m['role'] == 'system' %}{{ '<<SYS>>' + m['content'] + '<</SYS>>' }}"
     "{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}",
     " ", " <|endoftext|>"),  # the model says the space after [/INST] itself
    # SmolLM2-like ChatML that injects a default system message
    ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
     "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
     "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
     "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
     "", "<|im_end|>"),
])
def test_imported_template_mask_via_prefix_rendering(tiny_tokenizer, tmp_path, template, lead,
                                                    turn_end):
    d = tmp_path / "imported"
    shutil.copytree(tiny_tokenizer, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.load(d)
    conv = CONV[1:] if "[INST]" in template else CONV
    ids, mask = render_chat(tok, conv)
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(d))
    assert ids == list(hf.apply_chat_template(conv, tokenize=True, return_dict=False))
    segs = [t for t, on in chat_segments(tok, conv) if on]
    contents = [m["content"] for m in conv if m["role"] == "assistant"]
    if "trim" in template:
        contents = [c.strip() for c in contents]
    assert segs == [lead + c + turn_end for c in contents]
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "".join(segs)
    assert tok.eos_id in stop_token_ids(tok)
    prompt = render_prompt(tok, conv[:-1])
    assert ids[:len(prompt)] == prompt


def test_segment_tokenization_equals_whole_text_on_miniworld(tok, tmp_path_factory):
    """Tokenizing segment by segment gives the ids of the whole rendered text (so prompts
    built with tokenizer.encode(apply_chat_template(...)) match training), on every
    miniworld SFT record, with a tokenizer that never saw miniworld text."""
    from gptlab.data.world import generate_world
    from gptlab.train.sft_data import load_chat_records

    world = tmp_path_factory.mktemp("world")
    generate_world(world, seed=0, scale="tiny")
    records = load_chat_records(str(world))
    assert len(records) > 200 and any(r["meta"].get("masked_turns") for r in records)
    for rec, (ids, mask) in zip(records, render_records(tok, records)):
        assert ids == tok.encode(tok.apply_chat_template(rec["messages"]))
        assert sum(mask) > 0


def test_bad_messages_are_rejected(tok):
    with pytest.raises(ValueError, match="message 1"):
        render_chat(tok, [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}])


# --------------------------------------------------------------------------- batching


def _examples(tok, convs):
    return [Example.make(*render_chat(tok, c)) for c in convs]


def test_padded_batch_never_crosses_conversations(tok):
    """A conversation's logits and loss are the same alone and next to a longer one."""
    from gptlab.model import GPT, preset

    torch.manual_seed(0)
    model = GPT(preset(2, tok.vocab_size, 128)).eval()
    short = CONV[1:3]
    ex = _examples(tok, [short, CONV, CONV[:3]])
    x, y = collate(ex, tok.pad_id, pad_multiple=16)
    assert x.shape[1] % 16 == 0 and x.shape[1] >= len(ex[1]) - 1
    with torch.no_grad():
        batch_logits = model(x)
        for row, e in enumerate(ex):
            n = len(e) - 1
            alone = model(torch.tensor(e.ids[None, :-1], dtype=torch.long))
            assert torch.allclose(batch_logits[row, :n], alone[0], atol=1e-5)
            # targets: the next token where the mask trains it, nothing past the conversation
            want = [int(t) if m else IGNORE_INDEX for t, m in zip(e.ids[1:], e.mask[1:])]
            assert y[row, :n].tolist() == want and (y[row, n:] == IGNORE_INDEX).all()
            assert (x[row, n:] == tok.pad_id).all()
        # the batch loss is the token-weighted mean of the conversations' losses
        parts = [(float(model(torch.tensor(e.ids[None, :-1], dtype=torch.long),
                              targets=y[i:i + 1, :len(e) - 1])), e.n_targets) for i, e in enumerate(ex)]
        want = sum(l * n for l, n in parts) / sum(n for _, n in parts)
        assert float(model(x, targets=y)) == pytest.approx(want, rel=1e-5)


def test_fit_examples_policies(tok):
    ex = _examples(tok, [CONV, CONV[1:3]])
    n_long = len(ex[0])
    first_target = int(ex[0].mask.argmax())
    seq_len = max(len(ex[1]) + 2, first_target + 3)  # the short one fits, the long one does not
    assert n_long > seq_len + 1
    kept, st = fit_examples(ex, seq_len, "drop")
    assert [len(e) for e in kept] == [len(ex[1])]
    assert (st.total, st.kept, st.too_long, st.dropped_too_long, st.max_len) == (2, 1, 1, 1, n_long)
    assert "1 longer than" in st.summary(seq_len, "drop")
    kept, st = fit_examples(ex, seq_len, "truncate")
    assert [len(e) for e in kept] == [seq_len + 1, len(ex[1])] and st.truncated == 1
    # a cut that leaves no assistant token drops the example
    kept, st = fit_examples(ex[:1], 8, "truncate")
    assert kept == [] and st.dropped_no_targets == 1
    with pytest.raises(ValueError):
        fit_examples(ex, 8, "wrap")


def test_text_examples_cover_every_token():
    docs = [list(range(10, 30)), [5, 6]]
    ex = text_examples(docs, seq_len=8)
    assert [len(e) for e in ex] == [9, 9, 4, 2]
    assert all(e.mask.all() for e in ex)
    # consecutive pieces overlap by one token, so every token but the first is a target once
    assert sum(e.n_targets for e in ex[:3]) == 19


def test_length_grouped_batches_cover_each_example_once():
    lengths = [((i * 37) % 50) + 5 for i in range(203)]
    b = length_grouped_batches(lengths, rows=8, seed=1, epoch=0, group=4)
    flat = sorted(i for batch in b for i in batch)
    assert flat == list(range(203))
    assert b == length_grouped_batches(lengths, rows=8, seed=1, epoch=0, group=4)
    assert b != length_grouped_batches(lengths, rows=8, seed=1, epoch=1, group=4)
    # grouping by length keeps padding well below that of a random batching

    def pad(batches):
        return sum(max(lengths[i] for i in bb) * len(bb) - sum(lengths[i] for i in bb) for bb in batches)

    random_batches = [list(range(k, min(k + 8, 203))) for k in range(0, 203, 8)]
    assert pad(b) < 0.4 * pad(random_batches)


def test_fit_history_keeps_system_and_drops_whole_exchanges(tok):
    conv = [CONV[0]] + [m for _ in range(6) for m in (CONV[1], CONV[2])] + [CONV[3]]
    full = len(render_prompt(tok, conv))
    fitted, dropped = fit_history(tok, conv, full)
    assert dropped == 0 and fitted == conv
    budget = full - 10
    fitted, dropped = fit_history(tok, conv, budget)
    assert fitted[0] == CONV[0] and fitted[1]["role"] == "user" and fitted[-1] == CONV[3]
    assert dropped % 2 == 0 and dropped >= 2 and len(fitted) == len(conv) - dropped
    assert len(render_prompt(tok, fitted)) <= budget
    fitted, dropped = fit_history(tok, conv, 5)  # impossible: the last user message stays
    assert fitted == [CONV[0], CONV[3]]
