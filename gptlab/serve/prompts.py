"""Request -> prompt token ids, shared by the chat route, the completions and embeddings
routes, and the web chat's context fitting (gptlab.serve.web), so all of them count a prompt
the same way."""

from __future__ import annotations

from gptlab.chat import render_prompt
from gptlab.serve.errors import invalid
from gptlab.serve.tools import prompt_messages

MAX_PROMPTS = 64   # prompts per /v1/completions or /v1/embeddings request


def chat_prompt(entry, messages, plan=None) -> list[int]:
    """The prompt's ids. Control tokens come only from the chat template: message content
    is tokenized with special-token strings as plain text (gptlab.chat.render_prompt).
    Tool definitions, calls and results are rendered as gptlab.tool_format says."""
    try:
        return render_prompt(entry.tokenizer, prompt_messages(messages), plan.prompt_tools() if plan else None)
    except Exception as exc:  # a template that rejects the roles (e.g. no system role)
        raise invalid(f"The model's chat template cannot render these messages: {exc}", "messages")


def completion_prompts(entry, prompt) -> list[list[int]]:
    """The token ids of each prompt of /v1/completions (or each input of /v1/embeddings):
    a string, strings, token ids, or lists of token ids."""
    tok = entry.tokenizer
    if isinstance(prompt, str):
        prompts = [tok.encode(prompt)]
    elif all(isinstance(p, str) for p in prompt):
        prompts = [tok.encode(p) for p in prompt]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    else:
        prompts = [list(p) for p in prompt]
    vocab = entry.model.config.vocab_size
    for p in prompts:
        if not p:
            raise invalid("a prompt must not be empty", "prompt")
        if any(t >= vocab for t in p):
            raise invalid(f"token ids must be below the vocabulary size {vocab}", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise invalid(f"at most {MAX_PROMPTS} prompts per request", "prompt")
    return prompts
