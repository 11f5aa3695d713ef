"""Chat: conversations rendered with a model's template into token ids and loss masks
(`render`), turned into training examples and batches (`examples`), a session's history
fitting and model loading (`session`), and the terminal chat, `gptlab chat` (`terminal`).

The public names of render, examples and session are re-exported here
(`from gptlab.chat import render_prompt`); the terminal chat is imported from its module.
"""
from gptlab.chat.render import (
    IGNORE_INDEX, ROLES, chat_segments, content_pieces, default_system_text, is_native_chatml,
    record_prompt, render_chat, render_prompt, render_records, stop_token_ids, template_messages)
from gptlab.chat.examples import (
    TOO_LONG_POLICIES, Example, FitStats, collate, fit_examples, length_grouped_batches,
    text_examples)
from gptlab.chat.session import (
    fit_history, load_chat_model)

__all__ = [
    "IGNORE_INDEX", "ROLES", "chat_segments", "content_pieces", "default_system_text",
    "is_native_chatml", "record_prompt", "render_chat", "render_prompt", "render_records",
    "stop_token_ids", "template_messages", "TOO_LONG_POLICIES", "Example", "FitStats",
    "collate", "fit_examples", "length_grouped_batches", "text_examples", "fit_history",
    "load_chat_model"]
