"""gptlab.decode, the decode core the engine and the server's worker share: padding, the
top-k / top-p filters and both samplers, and the text stream with stop strings."""

from __future__ import annotations

import torch

from gptlab.decode import (TextStream, cut_at_stop, left_pad, sample, sample_rows, stable_prefix,
                           top_k_filter, top_p_filter)


def test_left_pad_aligns_prompts_right_and_positions_start_at_zero():
    ids, mask, pos = left_pad([[5, 6, 7], [9]], "cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    assert pos[1, -1].item() == 0 and pos[0].tolist() == [0, 1, 2]
    assert left_pad([[1, 2], [3, 4]], "cpu")[1:] == (None, None)


def test_top_p_keeps_the_smallest_set_reaching_p_per_row():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = top_p_filter(logits, torch.tensor([0.7, 1.0]))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.7
    assert torch.isfinite(out[1]).all()                                   # p = 1: unchanged
    assert torch.equal(top_p_filter(logits, 0.7)[0], out[0])              # a float is the same filter


def test_top_k_filter_and_tiny_top_p_leave_the_argmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    assert (torch.isfinite(top_k_filter(logits, 5)).sum(-1) == 5).all()
    g = torch.Generator().manual_seed(1)
    assert torch.equal(sample(logits, 1.0, top_p=1e-6, generator=g), logits.argmax(-1))
    assert torch.equal(sample(logits, 1.0, top_k=1, generator=g), logits.argmax(-1))


def test_sample_rows_mixes_greedy_and_sampled_rows():
    torch.manual_seed(0)
    logits = torch.randn(3, 20)
    seen = []

    def uniforms(hot):
        seen.append(hot)
        return torch.tensor([0.0, 0.999999])

    out = sample_rows(logits, [0.0, 1.0, 1.0], [None, None, 0.5], uniforms)
    assert seen == [[1, 2]] and out[0] == int(logits[0].argmax())
    assert out[1] == 0  # u = 0: inverse CDF picks the first token (every token has mass)
    kept = torch.isfinite(top_p_filter(logits[2:], 0.5))[0]
    assert kept[out[2]]  # u near 1 still lands inside the nucleus


class CharDecode:
    """A byte-level toy tokenizer: each id is one byte."""

    def __call__(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_emits_whole_characters_and_stops_before_the_stop_string():
    text = "héllo <|end|> more"
    stream, deltas, hit = TextStream(CharDecode(), ["<|end|>"]), [], False
    for b in text.encode():
        delta, hit = stream.push(b)
        assert "\ufffd" not in delta
        deltas.append(delta)
        if hit:
            break
    assert hit and "".join(deltas) == "héllo "
    assert cut_at_stop(text, ["<|end|>", "more"]) == ("héllo ", True)


def test_text_stream_flushes_a_held_back_tail():
    stream = TextStream(CharDecode(), ["STOP"])
    deltas = [stream.push(b)[0] for b in b"abST"]
    assert "".join(deltas) == "ab"           # "ST" may still become "STOP"
    assert stream.flush() == "ST"            # the completion ended: it did not
    assert stable_prefix("abc\ufffd", []) == "abc"
