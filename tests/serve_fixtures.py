"""Test helpers for the server: a tiny random-weight chat model and a live uvicorn server.

    from serve_fixtures import start_server
    base_url, stop = start_server(tmp_path)            # http://127.0.0.1:PORT
    try: ... openai.OpenAI(base_url=base_url + "/v1", api_key="x") ...
    finally: stop()

``start_server(tmp_path, models=None, tokenizer_dir=None, **settings)`` saves a depth-1
random-weight chat model under ``tmp_path`` (unless ``models`` names checkpoint dirs, as
``["DIR", "NAME=DIR"]``), builds ``gptlab.serve.create_app(ServeSettings(...))`` with the
database at ``tmp_path/serve.db`` and runs uvicorn on a free loopback port in a background
thread. ``settings`` are ``ServeSettings`` fields (``auth="on"``, ``max_batch=4``...;
``threads`` defaults to 1 here).
``stop()`` shuts the server down (and its engine workers).

The tokenizer is ``tokenizer_dir`` (pass the conftest ``tiny_tokenizer``) or, when None, a
384-token BPE trained once per process on the conftest corpus (ChatML special tokens).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

_TOKENIZER_CACHE: dict[str, Path] = {}


def default_tokenizer_dir() -> Path:
    """A 384-token BPE on the conftest corpus, trained once per process."""
    if "dir" not in _TOKENIZER_CACHE:
        from conftest import make_corpus_docs
        from gptlab.tokenizer import train_tokenizer_from_source

        root = Path(tempfile.mkdtemp(prefix="gptlab-serve-tok-"))
        corpus = root / "corpus.txt"
        corpus.write_text("\n\n".join(make_corpus_docs(600)) + "\n", encoding="utf-8")
        train_tokenizer_from_source(corpus, root / "tok", vocab_size=384)
        _TOKENIZER_CACHE["dir"] = root / "tok"
    return _TOKENIZER_CACHE["dir"]


def save_tiny_chat_model(out_dir, tokenizer_dir=None, depth: int = 1, seed: int = 0,
                         max_seq_len: int = 512, mute_stop_tokens: bool = False) -> Path:
    """Save a random-weight ``preset(depth)`` GPT with the ChatML tokenizer; returns the dir.
    ``mute_stop_tokens`` zeroes the head rows of eos and <|im_end|>, so greedy decoding never
    stops before max_tokens (for tests that need a long-running request)."""
    import torch

    from gptlab.checkpoint import save_checkpoint
    from gptlab.model import GPT, preset
    from gptlab.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir or default_tokenizer_dir())
    torch.manual_seed(seed)
    model = GPT(preset(depth, tok.vocab_size, max_seq_len=max_seq_len)).eval()
    if mute_stop_tokens:
        with torch.no_grad():
            model.lm_head.weight[[tok.eos_id, tok.im_end_id]] = 0.0
    return save_checkpoint(out_dir, model, tok, meta={"stage": "sft", "note": "random weights (tests)"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, models=None, tokenizer_dir=None, **settings):
    """Run the gptlab server on loopback in a thread; returns ``(base_url, stop)``."""
    import uvicorn

    from gptlab.serve import ServeSettings, create_app

    tmp_path = Path(tmp_path)
    if models is None:
        models = [str(save_tiny_chat_model(tmp_path / "tiny-chat", tokenizer_dir))]
    settings.setdefault("db", str(tmp_path / "serve.db"))
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("freeze_gc", False)  # a test process starts many servers
    settings.setdefault("threads", 1)  # tiny models: one thread per worker is fastest, and the CI box is shared
    port = settings.pop("port", None) or free_port()
    cfg = ServeSettings(models=list(models), port=port, **settings)
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server failed to start (see the log above)")
        if time.time() > deadline:
            raise TimeoutError("the test server did not start within 60 s")
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(timeout=15)

    return f"http://{cfg.host}:{port}", stop
