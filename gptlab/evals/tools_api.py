"""The `tools` eval through an OpenAI-compatible server: `gptlab eval --suite tools --api-base URL`.

`gptlab.evals.tools_eval` measures a model with unconstrained greedy decoding, so it counts
malformed calls that `gptlab serve` cannot return (the server decodes calls under an
xgrammar structural tag, gptlab.serve.tools). `ApiToolGenerator` is a `generate` for
`run_episodes` that sends every conversation to `POST {base_url}/chat/completions` with the
official `openai` client instead (the tools, `tool_choice: auto`, temperature 0,
`max_tokens`), a few requests in flight at once so the server batches them, and turns each
response back into the text the eval reads: the content, then the `tool_calls` as
`<tool_call>` blocks (gptlab.tool_format), so scoring is the same code either way. Any
OpenAI-compatible server works (vLLM, llama.cpp's server): a call whose `arguments` are not
a JSON object comes back as a block that does not parse, and counts as malformed.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

from gptlab.evals.tools_eval import MAX_NEW_TOKENS
from gptlab.tool_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, format_tool_calls

IN_FLIGHT = 8          # requests at once: enough for the server to batch, few enough to be polite


class ApiToolGenerator:
    """`generate(conversations, max_new_tokens)` over `/v1/chat/completions`.

    `model`: the served model's name (default: the first one `GET /models` lists); `api_key`:
    default `$OPENAI_API_KEY`, else a placeholder (a server without auth ignores it).
    `tool_choice`: the eval's is `auto`; `required` makes every reply a call (tests use it to
    drive the call path with a random model that would never start one)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, *,
                 in_flight: int = IN_FLIGHT, timeout: float = 300.0, tool_choice="auto"):
        import openai

        self.base_url = base_url.rstrip("/")
        self.in_flight, self.tool_choice = max(1, in_flight), tool_choice
        self.client = openai.OpenAI(base_url=self.base_url, timeout=timeout, max_retries=1,
                                    api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused")
        self.model = model or self._first_model()

    @property
    def label(self) -> str:
        """What eval.json records as the model."""
        return f"{self.base_url} ({self.model})"

    def __call__(self, conversations, *, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        pool = ThreadPoolExecutor(self.in_flight)
        try:
            return list(pool.map(lambda c: self.reply(*c, max_new_tokens=max_new_tokens), conversations))
        finally:   # after an error, the requests not yet sent are not sent
            pool.shutdown(cancel_futures=True)

    def reply(self, messages: list[dict], tools: list[dict] | None, *,
              max_new_tokens: int = MAX_NEW_TOKENS) -> str:
        """One conversation's reply as text: content, then the calls as `<tool_call>` blocks."""
        kw = dict(model=self.model, messages=messages, temperature=0.0, max_tokens=max_new_tokens)
        if tools:
            kw.update(tools=tools, tool_choice=self.tool_choice)
        response = self._request(lambda: self.client.chat.completions.create(**kw))
        if not response.choices:
            raise ValueError(f"{self.base_url}/chat/completions answered with no choices")
        return reply_text(response.choices[0].message)

    def _first_model(self) -> str:
        models = self._request(lambda: self.client.models.list()).data
        if not models:
            raise ValueError(f"{self.base_url}/models lists no model: pass --api-model NAME")
        return models[0].id

    def _request(self, send):
        """send(), with the client's errors as one clear line that names the URL."""
        import openai

        try:
            return send()
        except openai.APIConnectionError as exc:   # APITimeoutError included
            raise ValueError(f"cannot reach the server at {self.base_url} ({exc}); is it running "
                             "(`gptlab serve --model DIR`) and is --api-base its /v1 URL?") from None
        except openai.APIStatusError as exc:
            detail = _error_message(exc)
            hint = " (pass --api-key, or set OPENAI_API_KEY)" if exc.status_code in (401, 403) else ""
            raise ValueError(f"{self.base_url} answered HTTP {exc.status_code}: {detail}{hint}") from None


def reply_text(message) -> str:
    """A response's message (the openai client's ChatCompletionMessage) as the text a model
    would have written: its content, then one `<tool_call>` block per call."""
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    return "\n".join(part for part in (message.content, _call_blocks(calls)) if part)


def _call_blocks(calls: list[tuple[str, str]]) -> str:
    """The calls as `<tool_call>` blocks: arguments that are not a JSON object (a server
    without constrained decoding) keep their raw text, so the block does not parse."""
    blocks = []
    for name, arguments in calls:
        try:
            blocks.append(format_tool_calls([{"function": {"name": name, "arguments": arguments}}]))
        except ValueError:
            name_json = json.dumps(name, ensure_ascii=False)
            body = f'{{"name": {name_json}, "arguments": {arguments}}}'
            blocks.append(f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}")
    return "\n".join(blocks)


def _error_message(exc) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body)
    message = err.get("message") if isinstance(err, dict) else None
    return str(message or exc.message)[:500]
