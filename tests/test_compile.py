"""torch.compile of the training step (issue 15).

A bf16-autocast forward + backward of a GPT with targets used to crash Inductor ("mul
expected 2 arguments, got 3"): RoPE's ``out=`` writes broke the graph at every layer, the
pieces recompiled with dynamic shapes and hit an Inductor bug. Here the whole step must
compile as ONE graph (fullgraph), with dynamic shapes (SFT batches vary in length) and
without recompiling for a new length, and match eager.

Compiling takes a few tens of seconds on a CPU, so the test runs in its own xdist group.
"""

from __future__ import annotations

import pytest
import torch

from gptlab.model import GPT, preset

pytestmark = pytest.mark.xdist_group("compile")


def _step(run, model, x, y):
    """Loss and gradients (of ``model``'s parameters) of one bf16-autocast forward +
    backward through ``run`` (the model itself, or its compiled wrapper)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = run(x, targets=y)
    loss.backward()
    return loss.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _batch(gen, rows, length, vocab):
    x = torch.randint(0, vocab, (rows, length), generator=gen)
    y = torch.randint(0, vocab, (rows, length), generator=gen)
    y[0, : length // 4] = -100  # ignored positions, as SFT's loss mask makes them
    return x, y


def test_compiled_bf16_autocast_step_matches_eager():
    torch.manual_seed(0)
    model = GPT(preset(2, 1024, max_seq_len=128))  # the reproducer
    compiled = torch.compile(model, fullgraph=True)
    gen = torch.Generator().manual_seed(1)
    for i, length in enumerate((64, 40)):  # the second length must reuse the graph
        x, y = _batch(gen, 2, length, 1024)
        if i == 0:  # what automatic dynamic shapes does after SFT's first new length
            torch._dynamo.mark_dynamic(x, 1)
            torch._dynamo.mark_dynamic(y, 1)
        with torch.compiler.set_stance("fail_on_recompile" if i else "default"):
            loss_c, grads_c = _step(compiled, model, x, y)
        loss_e, grads_e = _step(model, model, x, y)
        assert torch.isfinite(loss_c)
        assert abs(loss_c - loss_e) < 2e-3, (length, loss_c, loss_e)
        for name, ge in grads_e.items():
            gc = grads_c[name]
            # bf16 matmuls: Inductor may order sums differently; the directions must agree
            cos = torch.nn.functional.cosine_similarity(gc.flatten(), ge.flatten(), dim=0)
            assert cos > 0.999, (length, name, float(cos))
            assert (gc - ge).abs().max() <= 0.05 * ge.abs().max(), (length, name)
