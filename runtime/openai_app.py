"""The OpenAI-compatible HTTP API (FastAPI): /v1/chat/completions, /v1/completions, /v1/models,
/health.

Requests are checked completely (JSON shape, sampling ranges, prompt length against the context)
before they queue for the engine, and every failure is OpenAI's error object
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status, never a traceback.
Security as llama-server and vLLM do it: with an API key every endpoint but /health needs
``Authorization: Bearer KEY`` (compared in constant time); request bodies are size-limited
before they are read whole; prompts are logged only when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import UserError
from runtime.engine import Engine, Finished, Job, QueueFull
from runtime.sampling import SamplingParams
from runtime.text import render_chat

MAX_STOP_STRINGS = 16


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# request bodies -----------------------------------------------------------------------------
class _Body(BaseModel):
    """Fields every generation request shares; unknown fields are ignored, as OpenAI's SDKs add new
    ones over time. Sampling fields left out take the model's generation_config.json values."""

    model_config = ConfigDict(extra="ignore")
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM's extension; -1 or 0 = off
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1)
    logprobs: Any = None
    user: str | None = None


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_ContentPart] | None = None


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Any] | None = None


class CompletionBody(_Body):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


def _parse(model_cls: type[BaseModel], raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise APIError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param) from None


# the app ------------------------------------------------------------------------------------
class Server:
    """Turns validated requests into engine jobs and engine events into OpenAI responses."""

    def __init__(self, engine: Engine, model_name: str, log_prompts: bool = False) -> None:
        self.engine, self.model_name, self.log_prompts = engine, model_name, log_prompts
        self.model = engine.model
        self.created = int(time.time())

    # checks
    def _common(self, body: _Body) -> tuple[SamplingParams, list[str]]:
        if body.model != self.model_name:
            raise APIError(404, f"the model '{body.model}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")
        if body.n != 1:
            raise APIError(400, "n > 1 is not supported (one choice per request)", param="n")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s or len(s) > 256 for s in stops):
            raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} non-empty strings of at most 256 characters",
                           param="stop")
        top_k = body.top_k if body.top_k is None else max(body.top_k, 0)
        params = self.model.default_sampling(temperature=body.temperature, top_p=body.top_p, top_k=top_k,
                                             min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                                             presence_penalty=body.presence_penalty,
                                             frequency_penalty=body.frequency_penalty, seed=body.seed)
        try:
            params.validate()
        except UserError as e:
            raise APIError(400, str(e)) from None
        return params, stops

    def _budget(self, n_prompt: int, max_tokens: int | None, param: str) -> int:
        ctx = self.model.max_context
        if n_prompt < 1:
            raise APIError(400, "the prompt is empty", param="prompt")
        if n_prompt >= ctx:
            raise APIError(400, f"this model's maximum context length is {ctx} tokens, but the prompt has "
                           f"{n_prompt} tokens (no room to generate); shorten it", param="messages",
                           code="context_length_exceeded")
        if max_tokens is None:
            return ctx - n_prompt
        if n_prompt + max_tokens > ctx:
            raise APIError(400, f"this model's maximum context length is {ctx} tokens, but the prompt has "
                           f"{n_prompt} tokens and {param} asks for {max_tokens} more; lower {param} to "
                           f"{ctx - n_prompt} or less, or shorten the prompt", param=param,
                           code="context_length_exceeded")
        return max_tokens

    def _chat_prompt(self, body: ChatBody) -> tuple[list[int], str]:
        if body.tools:
            raise APIError(400, "tools are not supported", param="tools")
        messages = []
        for i, m in enumerate(body.messages):
            if isinstance(m.content, list):
                if any(p.type != "text" or p.text is None for p in m.content):
                    raise APIError(400, "only text content parts are supported", param=f"messages.{i}.content")
                content = "".join(p.text or "" for p in m.content)
            else:
                content = m.content or ""
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": content})
        kw = body.chat_template_kwargs or {}
        thinking = kw.get("enable_thinking")
        if thinking is not None and not isinstance(thinking, bool):
            raise APIError(400, "chat_template_kwargs.enable_thinking must be true or false",
                           param="chat_template_kwargs.enable_thinking")
        try:
            text = render_chat(self.model.model_dir, messages, True, thinking)
        except UserError as e:
            raise APIError(400, str(e), param="messages") from None
        return self.model.tokenizer.encode(text, add_special_tokens=False).ids, text

    def _completion_prompt(self, body: CompletionBody) -> tuple[list[int], str]:
        if body.echo or body.suffix is not None or (body.best_of or 1) > 1:
            raise APIError(400, "echo, suffix and best_of are not supported")
        p = body.prompt
        if isinstance(p, list) and p and all(isinstance(x, int) for x in p):
            vocab = self.model.config.vocab_size
            if any(not 0 <= x < vocab for x in p):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            return list(p), ""
        if isinstance(p, list):
            if len(p) != 1:
                raise APIError(400, "one prompt per request (batches of prompts are not supported)", param="prompt")
            p = p[0]
        return self.model.tokenizer.encode(p, add_special_tokens=False).ids, p

    # endpoints
    async def chat(self, request: Request) -> Any:
        body = _parse(ChatBody, await request.body())
        params, stops = self._common(body)
        ids, text = self._chat_prompt(body)
        max_new = self._budget(len(ids), body.max_completion_tokens or body.max_tokens,
                               "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        return await self._run(request, "chatcmpl", body, ids, text, max_new, params, stops)

    async def completions(self, request: Request) -> Any:
        body = _parse(CompletionBody, await request.body())
        params, stops = self._common(body)
        ids, text = self._completion_prompt(body)
        max_new = self._budget(len(ids), body.max_tokens, "max_tokens")
        return await self._run(request, "cmpl", body, ids, text, max_new, params, stops)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "qwen3-vk", "max_model_len": self.model.max_context}]}

    async def _run(self, request: Request, kind: str, body: _Body, ids: list[int], text: str, max_new: int,
                   params: SamplingParams, stops: list[str]) -> Any:
        rid = f"{kind}-{uuid.uuid4().hex[:24]}"
        job = Job(rid, ids, max_new, params, stops, asyncio.get_running_loop(),
                  log_prompt=text if self.log_prompts else None)
        try:
            self.engine.submit(job)
        except QueueFull as e:
            raise APIError(429, str(e), "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from None
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        chat = kind == "chatcmpl"
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(self._stream(job, watcher, chat, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            pieces = []
            while True:
                ev, value = await job.events.get()
                if ev == "text":
                    pieces.append(value)
                elif ev == "error":
                    raise APIError(500, value, "server_error")
                else:
                    return self._final(rid, chat, value)
        finally:
            job.cancel.set()  # no-op when finished; frees the engine if this handler was cancelled
            watcher.cancel()

    def _head(self, rid: str, chat: bool) -> dict:
        return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_name}

    @staticmethod
    def _usage(f: Finished) -> dict:
        return {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
                "total_tokens": f.prompt_tokens + f.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": f.cached_tokens}}

    def _final(self, rid: str, chat: bool, f: Finished) -> dict:
        reason = "stop" if f.finish_reason == "cancelled" else f.finish_reason
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": f.text}, "logprobs": None,
                      "finish_reason": reason}
        else:
            choice = {"index": 0, "text": f.text, "logprobs": None, "finish_reason": reason}
        return {**self._head(rid, chat), "object": "chat.completion" if chat else "text_completion",
                "choices": [choice], "usage": self._usage(f)}

    async def _stream(self, job: Job, watcher: asyncio.Task, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        head = self._head(job.request_id, chat)

        def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> str:
            if chat:
                d: dict = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

        try:
            if chat:
                yield chunk(None, role=True)
            while True:
                ev, value = await job.events.get()
                if ev == "text":
                    yield chunk(value)
                elif ev == "error":
                    err = {"error": {"message": value, "type": "server_error", "param": None, "code": None}}
                    yield f"data: {json.dumps(err)}\n\n"
                    break
                else:
                    reason = "stop" if value.finish_reason == "cancelled" else value.finish_reason
                    yield chunk(None, reason)
                    if include_usage:
                        yield f"data: {json.dumps({**head, 'choices': [], 'usage': self._usage(value)})}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:  # normal end, or the client went away (this generator is closed / cancelled)
            job.cancel.set()
            watcher.cancel()


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Cancel the job the moment the client disconnects, queued or running."""
    with contextlib.suppress(Exception):
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel.set()
                return


class Guard:
    """ASGI middleware in front of everything: API key (all paths but /health) and body size limit.
    It reads the body itself, up to the limit, so an oversized upload is refused without being
    buffered whole, then hands the body on."""

    def __init__(self, app, api_key: str | None, max_body: int) -> None:
        self.app, self.max_body = app, max_body
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"] != "/health":
            auth = headers.get(b"authorization", b"")
            token = auth[7:] if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.key):
                return await error_response(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                                            code="invalid_api_key")(scope, receive, send)
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        too_big = error_response(413, f"the request body is larger than the server's limit of {self.max_body} bytes",
                                 code="request_too_large")
        if declared > self.max_body:
            return await too_big(scope, receive, send)
        body, more = b"", scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(engine: Engine, model_name: str, api_key: str | None = None, max_body: int = 1 << 20,
               log_prompts: bool = False) -> Any:
    server = Server(engine, model_name, log_prompts)
    app = FastAPI(title="qwen3-vk", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, _e) -> JSONResponse:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found")

    @app.exception_handler(405)
    async def _bad_method(request: Request, _e) -> JSONResponse:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return server.models()

    @app.get("/stats")
    async def stats() -> dict:
        """Engine counters and GPU allocations (a leak check for operators and the load test)."""
        import wgpu

        counts = wgpu.diagnostics.object_counts.get_dict()
        ex = engine.model.executor
        return {"waiting": engine.waiting, "running": engine.running, **engine.counts,
                "gpu_buffers": counts.get("Buffer", {}).get("count"), "executor_buffers": ex.live_buffers,
                "executor_bytes": ex.allocated_bytes}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await server.chat(request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await server.completions(request)

    return Guard(app, api_key, max_body)
