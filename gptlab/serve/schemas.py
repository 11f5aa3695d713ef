"""Request bodies of the OpenAI-compatible API (pydantic), so FastAPI validates them and
publishes them in /openapi.json. Fields are OpenAI's; unknown fields are ignored, as most
OpenAI-compatible servers do, except those that would change the meaning of a request
(``echo`` with ``logprobs``...), which the handlers reject with a 400."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

# Numbers are strict: `max_tokens: true` or `"5"` is a 400, not 1 or 5 (pydantic's lax mode
# would coerce them); a float field still takes an integer.
Seed = Annotated[int, Field(strict=True, ge=-(2 ** 63), le=2 ** 63 - 1)]
Stop = Union[Annotated[str, Field(max_length=256)],
             Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=4)], None]
TokenCount = Annotated[int, Field(strict=True, ge=1, le=2 ** 31)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str = Field(max_length=64)
    arguments: str = ""     # JSON text, as OpenAI sends it


class ToolCall(_Body):
    id: str | None = Field(None, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None   # an assistant's calls (gptlab.serve.tools)
    tool_call_id: str | None = None            # the call a tool message answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class JSONSchemaSpec(_Body):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


class _Sampling(_Body):
    model: str = Field(max_length=256)
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=128)] | None = None
    stop: Stop = None
    seed: Seed | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # accepted for compatibility, not implemented (documented in docs/SERVING.md)
    presence_penalty: Annotated[float, Field(strict=True, ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(strict=True, ge=-2, le=2)] | None = None
    # vLLM's extension, for benchmarks: do not stop at the end-of-turn token
    ignore_eos: bool | None = False


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list | None = None          # checked by gptlab.serve.tools (clear 400s)
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: bool | None = None


PromptType = Union[str, Annotated[list[str], Field(min_length=1)],
                   Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)],
                   Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
                             Field(min_length=1)]]


class CompletionRequest(_Sampling):
    prompt: PromptType
    max_tokens: TokenCount | None = 16
    echo: bool | None = False
    logprobs: Annotated[int, Field(strict=True, ge=0, le=5)] | None = None
    best_of: Annotated[int, Field(strict=True, ge=1, le=1)] | None = None
    suffix: str | None = None


EmbeddingInput = Union[Annotated[str, Field()], Annotated[list[str], Field(min_length=1)],
                       Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)],
                       Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
                                 Field(min_length=1)]]


class EmbeddingRequest(_Body):
    model: str = Field(max_length=256)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: Annotated[int, Field(strict=True, ge=1)] | None = None
    user: str | None = None


class ModerationRequest(_Body):
    input: Union[str, Annotated[list[str], Field(min_length=1)],
                 Annotated[list[TextPart], Field(min_length=1)]]
    model: str | None = None


class PromoteRequest(_Body):
    alias: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
