"""The gptlab decoder: a Llama-architecture GPT, readable top to bottom.

One file, plain PyTorch, and weight-for-weight interchangeable with
``transformers.LlamaForCausalLM``: ``GPT(config).state_dict()`` has exactly the keys and
shapes of the Hugging Face model built from ``config.to_hf_dict()``, and the same weights
give the same logits (tests/test_model.py checks this to 1e-5 in fp32).

The pieces, and where they come from:

- RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization",
  arXiv:1910.07467): pre-norm before attention and MLP, and once more before the head.
- Rotary position embeddings, RoPE (Su et al. 2021, "RoFormer", arXiv:2104.09864), in the
  Hugging Face Llama layout ("rotate_half": the two halves of each head are the real and
  imaginary parts), so that Llama checkpoints load without permuting q/k weights.
- Grouped-query attention, GQA (Ainslie et al. 2023, arXiv:2305.13245): ``num_key_value_heads``
  K/V heads shared by groups of query heads; query head ``h`` reads K/V head
  ``h // (num_attention_heads // num_key_value_heads)``, as in ``transformers``' ``repeat_kv``.
- SwiGLU MLP (Shazeer 2020, "GLU Variants Improve Transformer", arXiv:2002.05202):
  ``down(silu(gate(x)) * up(x))``, hidden size ~ 8/3 of the width.
- No biases anywhere, optional tied input/output embeddings (Press & Wolf 2017,
  arXiv:1608.05859), attention through ``F.scaled_dot_product_attention``.

``preset(depth, ...)`` is the single complexity dial (as in nanochat): width, heads and MLP
size follow from the depth, and ``training_defaults(depth)`` suggests a batch size (in
tokens) and an AdamW learning rate for it.

``KVCache`` preallocates keys and values for a batch. Prompts of different lengths are
*left padded*: every row writes its next token at the same cache slot, a per-row boolean
``valid`` mask marks which slots hold real tokens, and the caller passes per-row
``position_ids`` so that RoPE positions start at 0 for every prompt (gptlab.engine does
this). Left padding keeps the cache a single dense tensor and a decode step one batched
matmul per layer.

Two small autograd functions keep training lean without changing any math (see
docs/PERFORMANCE.md): RoPE written as one rotation with one output buffer, and a fused
linear + cross-entropy that never materialises the (tokens x vocab) logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- config


@dataclass
class ModelConfig:
    """Hyper-parameters, with the field names of ``transformers.LlamaConfig``."""

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_hf_dict(self) -> dict:
        """A ``config.json`` dict that ``transformers.LlamaConfig`` reads (4.x and 5.x)."""
        d = asdict(self)
        d.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            hidden_act="silu",
            head_dim=self.head_dim,
            attention_bias=False,
            mlp_bias=False,
            attention_dropout=0.0,
            initializer_range=0.02,
            rope_scaling=None,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            use_cache=True,
            torch_dtype="float32",
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict) -> ModelConfig:
        """Read a Llama ``config.json`` dict; unknown keys are ignored, unsupported
        features (biases, rope scaling, other activations, ...) raise ``ValueError``."""
        _check_supported(d)
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw.setdefault("num_key_value_heads", d.get("num_attention_heads", cls.num_key_value_heads))
        rope = d.get("rope_parameters") or {}
        if "rope_theta" not in d and "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        if kw.get("num_key_value_heads") is None:
            kw["num_key_value_heads"] = kw.get("num_attention_heads", cls.num_attention_heads)
        return cls(**kw)


def _check_supported(d: dict) -> None:
    def bad(what):
        raise ValueError(f"unsupported model config: {what} (gptlab.model implements plain "
                         "Llama: SiLU, no biases, default RoPE, head_dim = hidden/heads)")

    if d.get("model_type", "llama") != "llama":
        bad(f"model_type={d['model_type']!r}")
    if d.get("hidden_act", "silu") != "silu":
        bad(f"hidden_act={d['hidden_act']!r}")
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key):
            bad(f"{key}=True")
    if d.get("rope_scaling"):
        bad(f"rope_scaling={d['rope_scaling']!r}")
    rope_type = (d.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type != "default":
        bad(f"rope_parameters.rope_type={rope_type!r}")
    if (d.get("pretraining_tp") or 1) != 1:
        bad(f"pretraining_tp={d['pretraining_tp']}")
    head_dim = d.get("head_dim")
    if head_dim is not None and "hidden_size" in d and "num_attention_heads" in d:
        if head_dim != d["hidden_size"] // d["num_attention_heads"]:
            bad(f"head_dim={head_dim} != hidden_size / num_attention_heads")


# ----------------------------------------------------------------------------- the depth dial

GQA_RATIO = 2  # query heads per K/V head, when the head count allows it


def preset(depth: int, vocab_size: int, max_seq_len: int = 2048) -> ModelConfig:
    """The one complexity dial: width = 64 * depth, head_dim 64 (32 below depth 8),
    two query heads per K/V head, SwiGLU hidden = 8/3 * width rounded up to 64.

    Untied embeddings, vocab 4096: depth 2 ~ 1.5 M parameters, depth 4 ~ 5 M (CPU-tiny);
    depth 12 ~ 125 M at vocab 32768; depth 20 ~ 0.45 B at vocab 32768, 0.53 B at 65536.
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    width = 64 * depth
    head_dim = 64 if depth >= 8 else 32
    n_head = width // head_dim
    hidden = 64 * math.ceil(8 * width / 3 / 64)
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=hidden,
        num_hidden_layers=depth, num_attention_heads=n_head, num_key_value_heads=_kv_heads(n_head),
        max_position_embeddings=max_seq_len,
    )


def _kv_heads(n_head: int) -> int:
    """The most K/V heads with at least GQA_RATIO query heads each (n_head/2 when even)."""
    return max(d for d in range(1, n_head + 1) if n_head % d == 0 and d * GQA_RATIO <= max(n_head, GQA_RATIO))


def training_defaults(depth: int) -> dict:
    """Suggested pretraining settings for ``preset(depth)``.

    ``batch_tokens`` grows with the square of depth (a power of two, 2^13 .. 2^19 = nanochat's
    524288 at d20); ``lr`` (AdamW peak) scales as 1/sqrt(width), 6e-4 at width 768 (GPT-2 small);
    ``tokens_per_param`` = 20 is the Chinchilla-optimal data budget.
    """
    width = 64 * depth
    batch = 524288 * (depth / 20) ** 2
    batch_tokens = int(2 ** min(19, max(13, round(math.log2(batch)))))
    return {
        "batch_tokens": batch_tokens,
        "lr": 6e-4 * math.sqrt(768 / width),
        "min_lr_frac": 0.1,
        "weight_decay": 0.1,
        "betas": (0.9, 0.95),
        "grad_clip": 1.0,
        "warmup_frac": 0.02,
        "tokens_per_param": 20,
    }


# ----------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 like ``LlamaRMSNorm``."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        y = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return self.weight * y.to(x.dtype)


def rope_tables(head_dim: int, theta: float, length: int, device=None):
    """cos and sin, (length, head_dim), computed exactly as ``LlamaRotaryEmbedding``."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    pos = torch.arange(length, device=device).float()
    freqs = pos[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class _Rope(torch.autograd.Function):
    """RoPE with one output allocation: (x1, x2) -> (x1*c - x2*s, x2*c + x1*s).

    This is ``x*cos + rotate_half(x)*sin`` with c, s the first half of the cos/sin tables
    (both halves are equal); the backward pass is the rotation by -angle."""

    @staticmethod
    def forward(ctx, x, c, s):
        ctx.save_for_backward(c, s)
        return _rotate(x, c, s, sign=1.0)

    @staticmethod
    def backward(ctx, grad):
        c, s = ctx.saved_tensors
        return _rotate(grad, c, s, sign=-1.0), None, None


def _rotate(x, c, s, sign):
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, c, out=o1)
    o1.addcmul_(x2, s, value=-sign)
    torch.mul(x2, c, out=o2)
    o2.addcmul_(x1, s, value=sign)
    return out


def apply_rope(x, cos, sin):
    """Rotate x (B, T, heads, head_dim) by position. cos/sin: (T or B,T, 1, head_dim)."""
    half = x.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    if torch.compiler.is_compiling():
        # Dynamo cannot trace ``out=`` into a chunk view: it would break the graph at every
        # layer, recompile with dynamic shapes and hit an Inductor bug (issue 15). Inductor
        # fuses this plain form into one kernel, backward included.
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rope.apply(x, c, s)
    return _rotate(x, c, s, sign=1.0)


class _LinearCrossEntropy(torch.autograd.Function):
    """mean CE(h @ w.T, targets) without materialising the (N, V) logits or their gradient.

    Rows are processed in chunks; the gradients (softmax - onehot) are folded into dh and
    dw during the forward pass, so backward is a rescale (the "fused linear cross-entropy"
    of Liger-Kernel, Hsu et al. 2024, arXiv:2410.10989). Saves several N x V passes and
    allocations on CPU, and the N x V fp32 logits in GPU memory. Matmuls run in the
    autocast dtype when autocast is on; log-softmax and dw accumulate in (at least) fp32.
    """

    @staticmethod
    def forward(ctx, h, w, targets, ignore_index, pieces):
        dev = h.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else w.dtype
        acc = torch.promote_types(cdt, torch.float32)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        dh = torch.empty_like(h) if want_grad else None
        dw = torch.zeros_like(w, dtype=acc) if want_grad else None
        total = torch.zeros((), dtype=acc, device=h.device)
        # `pieces` slices of the first axis, each flattened to rows; a count, not a row size,
        # so a compiled graph does not depend on how many rows there are
        parts = [t.tensor_split(pieces) for t in (h, safe, valid)]
        dh_parts = dh.tensor_split(pieces) if want_grad else [None] * pieces
        with torch.autocast(dev, enabled=False):
            wc = w.to(cdt)
            for hc, tc, vc, dhc in zip(*parts, dh_parts):
                hc, tc, vc = hc.reshape(-1, hc.shape[-1]).to(cdt), tc.reshape(-1, 1), vc.reshape(-1, 1)
                logp = torch.log_softmax((hc @ wc.t()).to(acc), dim=-1)
                total -= (logp.gather(1, tc) * vc).sum()
                if want_grad:  # softmax - onehot, zero on ignored rows, in place
                    p = logp.exp_().scatter_add_(1, tc, -vc.to(acc)).mul_(vc).to(cdt)
                    dhc.copy_((p @ wc).view(dhc.shape))
                    if cdt == acc:
                        dw.addmm_(p.t(), hc)
                    else:
                        dw += p.t() @ hc
        n = valid.sum()
        ctx.save_for_backward(dh, dw, n)
        ctx.w_dtype = w.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad):
        dh, dw, n = ctx.saved_tensors
        scale = grad / n
        return dh * scale.to(dh.dtype), (dw * scale).to(ctx.w_dtype), None, None, None


COMPILED_CE_PIECES = 8  # batch slices of the fused cross-entropy inside torch.compile


def linear_cross_entropy(h, w, targets, ignore_index=-100, chunk=None):
    """Mean cross-entropy of the logits ``h @ w.T`` (in fp32) against ``targets``;
    h (N, d) or (B, T, d), w (V, d), targets (N,) or (B, T).

    Eager: rows in chunks of ``chunk`` (default ~4 MiB of fp32 logits, cache-sized for CPUs).
    Under torch.compile: ``COMPILED_CE_PIECES`` slices of the first axis, pass (B, T, d):
    B is fixed while T may be symbolic (SFT), so one graph serves every length (a d12
    batch of 32 x 1024 at vocab 32768: 512 MiB of fp32 logits a slice)."""
    if torch.compiler.is_compiling():
        # a symbolic B (batch size changing between calls) gets one slice: splitting it
        # would add guards, and Inductor mis-lowers empty symbolic slices (torch 2.13)
        rows = h.shape[0]
        pieces = min(rows, COMPILED_CE_PIECES) if isinstance(rows, int) else 1
        return _LinearCrossEntropy.apply(h, w, targets, ignore_index, pieces)
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    chunk = chunk or max(256, (1 << 20) // w.shape[0])
    pieces = max(1, -(-h.shape[0] // chunk))
    return _LinearCrossEntropy.apply(h, w, targets, ignore_index, pieces)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, kv_cache):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        y = attend(q, k, v, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


def attend(q, k, v, mask):
    """SDPA with GQA. mask: None (no masking), "causal", or a bool (B, 1, Tq, Tk) tensor."""
    B, H, T, hd = q.shape
    n_kv = k.shape[1]
    if T == 1 and H != n_kv and not isinstance(mask, str):
        # decoding: fold each K/V group's query heads into the query axis; no K/V copies
        y = F.scaled_dot_product_attention(q.reshape(B, n_kv, H // n_kv, hd), k, v, attn_mask=mask)
        return y.reshape(B, H, 1, hd)
    if isinstance(mask, str):  # training / unpadded prefill: flash kernels do GQA natively
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != n_kv)
    if H != n_kv:  # explicit masks: expand K/V so every backend accepts them
        k = k.repeat_interleave(H // n_kv, dim=1)
        v = v.repeat_interleave(H // n_kv, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Holds the parameters under the names ``LlamaModel`` uses (``model.*``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# ----------------------------------------------------------------------------- KV cache


class KVCache:
    """Preallocated keys/values for ``batch_size`` left-padded sequences of up to ``max_len``.

    All rows share the write position ``pos``; ``valid`` (B, max_len) marks real tokens
    (None while no padding has been seen, which keeps the common batch-1 case mask-free).
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, *, device=None,
                 dtype=torch.float32):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.batch_size, self.max_len, self.pos = batch_size, max_len, 0
        self.valid: torch.Tensor | None = None

    def reset(self):
        self.pos, self.valid = 0, None

    def set_valid(self, mask: torch.Tensor) -> None:
        """Record which of the next T slots (mask: (B, T), nonzero = real token) are real."""
        if self.valid is None:
            if bool(mask.all()):
                return
            self.valid = torch.ones(self.batch_size, self.max_len, dtype=torch.bool, device=mask.device)
        self.valid[:, self.pos:self.pos + mask.shape[1]] = mask.bool()

    def update(self, layer: int, k, v):
        """Write k, v (B, n_kv, T, hd) at ``pos``; return the keys/values so far (views)."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# ----------------------------------------------------------------------------- the model


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rope = None  # (cos, sin), built lazily on the right device and dtype
        self._register_load_state_dict_pre_hook(self._fill_tied_head)
        self.init_weights()

    # -- init and loading

    @torch.no_grad()
    def init_weights(self):
        """N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers) (GPT-2),
        norms at 1."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.num_hidden_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def _fill_tied_head(self, state_dict, prefix, *args):
        """Checkpoints with tied embeddings may omit lm_head.weight (HF save_pretrained does)."""
        head, embed = prefix + "lm_head.weight", prefix + "model.embed_tokens.weight"
        if self.config.tie_word_embeddings and head not in state_dict and embed in state_dict:
            state_dict[head] = state_dict[embed]

    # -- bookkeeping

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters. non_embedding drops the input embedding table, unless it is
        tied to the output head (then it does matmul work, as in nanoGPT's count)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_word_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward): 6N + 12 * layers * heads * head_dim * T
        (Kaplan et al. 2020; PaLM appendix B), N the non-embedding parameters."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.num_hidden_layers * c.hidden_size * seq_len

    # -- forward

    def _rope_tables(self, length: int, x):
        """cos/sin tables covering ``length`` positions, cached on x's device and dtype."""
        if torch.compiler.is_compiling():
            # computed inside the graph (Inductor fuses it): filling the cache from a compiled
            # call would change ``self._rope`` and force a recompile on the next call
            cos, sin = rope_tables(self.config.head_dim, self.config.rope_theta, length, x.device)
            return cos.to(x.dtype), sin.to(x.dtype)
        cos = self._rope[0] if self._rope is not None else None
        if cos is None or cos.shape[0] < length or cos.device != x.device or cos.dtype != x.dtype:
            n = max(length, self.config.max_position_embeddings)
            cos, sin = rope_tables(self.config.head_dim, self.config.rope_theta, n, x.device)
            self._rope = (cos.to(x.dtype), sin.to(x.dtype))
        return self._rope

    def forward(self, input_ids, targets=None, *, kv_cache: KVCache | None = None,
                attention_mask=None, position_ids=None, ignore_index: int = -100,
                logits_to_keep: int = 0):
        """input_ids (B, T) -> logits (B, T, V) float32, or the mean cross-entropy against
        ``targets`` (B, T) (already shifted: targets[:, t] is the token after input_ids[:, t]).

        attention_mask: (B, T) or (B, past+T), 1 for real tokens, 0 for (left) padding.
        position_ids: (B, T) RoPE positions; default past+0 .. past+T-1 (with a kv_cache
            they must stay below ``kv_cache.max_len``, as left padding guarantees).
        kv_cache: a ``KVCache``; keys/values are written at ``kv_cache.pos``, which advances by T.
        logits_to_keep: if > 0, only the last that many positions get logits (generation).
        """
        x = self.hidden_states(input_ids, kv_cache=kv_cache, attention_mask=attention_mask,
                               position_ids=position_ids)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if targets is None:
            return self.lm_head(x).float()
        if torch.compiler.is_compiling():  # (B, T, d): sliced along B (see linear_cross_entropy)
            return linear_cross_entropy(x, self.lm_head.weight, targets, ignore_index)
        h, targets = x.reshape(-1, x.shape[-1]), targets.reshape(-1)
        # only positions with a target need the (d x vocab) head: in SFT the prompt
        # tokens are ~half the rows, and SmolLM2's head is a fifth of its FLOPs
        keep = targets != ignore_index
        h, targets = h[keep], targets[keep]
        return linear_cross_entropy(h, self.lm_head.weight, targets, ignore_index)

    def hidden_states(self, input_ids, *, kv_cache: KVCache | None = None, attention_mask=None,
                      position_ids=None) -> torch.Tensor:
        """input_ids (B, T) -> the final-norm hidden states (B, T, hidden_size) that the LM
        head reads (``forward``'s arguments mean the same here); also what a reward head or
        an embedding pools."""
        B, T = input_ids.shape
        past = kv_cache.pos if kv_cache is not None else 0
        x = self.model.embed_tokens(input_ids)
        cos, sin = self._rope_for(T, past, position_ids, kv_cache, x)
        mask = self._mask(B, T, past, attention_mask, kv_cache, x.device)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.model.norm(x)

    def _rope_for(self, T, past, position_ids, kv_cache, x):
        """cos/sin shaped to broadcast over (B, T, heads, head_dim)."""
        if position_ids is None:
            cos, sin = self._rope_tables(past + T, x)
            return cos[past:past + T, None, :], sin[past:past + T, None, :]
        # left-padded positions never exceed the cache slot, so no need to read max() back
        bound = kv_cache.max_len if kv_cache is not None else int(position_ids.max()) + 1
        cos, sin = self._rope_tables(bound, x)
        return cos[position_ids].unsqueeze(2), sin[position_ids].unsqueeze(2)

    def _mask(self, B, T, past, attention_mask, kv_cache, device):
        """None (attend to everything), "causal", or a bool (B, 1, T, past+T) mask."""
        valid = None
        if kv_cache is not None:
            if attention_mask is not None:
                kv_cache.set_valid(attention_mask[:, -T:])
            if kv_cache.valid is not None:
                valid = kv_cache.valid[:, :past + T]
        elif attention_mask is not None and not bool(attention_mask.all()):
            valid = attention_mask.bool()
        if valid is None:
            return None if T == 1 else ("causal" if past == 0 else _causal(T, past, device)[None, None])
        # causal AND key is real; a padding query attends to itself so no row is empty
        q_pos = past + torch.arange(T, device=device)
        itself = torch.arange(past + T, device=device)[None, :] == q_pos[:, None]  # (T, past+T)
        allowed = _causal(T, past, device) & (valid[:, None, :] | itself)  # (B, T, past+T)
        return allowed[:, None]


def _causal(T, past, device):
    """(T, past+T) bool: query t (at absolute position past+t) may see keys <= past+t."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)
