"""``python -m runtime.serve COMPILED_DIR``: an OpenAI-compatible HTTP server.

Endpoints: POST /v1/chat/completions and /v1/completions (streaming with "stream": true, as
server-sent events), GET /v1/models, GET /health (always open), GET /stats (engine counters,
GPU buffers). The engine runs one request at a time (batch 1); the others wait in a bounded
first-come-first-served queue and get 429 when it is full. A client that disconnects frees the
engine at once.

Listens on 127.0.0.1 unless --host says otherwise. With --api-key (or $QWEN3VK_API_KEY) every
endpoint but /health needs "Authorization: Bearer KEY". Prompts are not logged unless
--log-prompts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.errors import UserError, cli_main
from runtime.cli_args import HelpFormatter, add_model_args, open_module

API_KEY_ENV = "QWEN3VK_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.serve", description=__doc__, formatter_class=HelpFormatter)
    add_model_args(ap)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the server to "
                    "the network (default: 127.0.0.1, this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    ap.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on every endpoint but /health "
                    f"(default: ${API_KEY_ENV} if set, else no key)")
    ap.add_argument("--model-name", help="the model id clients send and /v1/models lists (default: the model "
                    "directory's name)")
    ap.add_argument("--max-queue", type=int, default=16, help="requests that may wait while one runs; more get "
                    "429 (default: 16)")
    ap.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body; larger get 413 "
                    "(default: 1048576)")
    ap.add_argument("--log-prompts", action="store_true", help="log each request's prompt text (default: off; "
                    "only sizes and timings are logged)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="server log level (default: info)")
    return ap


@cli_main
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if not 0 <= a.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {a.port}")
    if a.max_queue < 0:
        raise UserError(f"--max-queue must be >= 0, got {a.max_queue}")
    if a.max_body_bytes < 1024:
        raise UserError(f"--max-body-bytes must be >= 1024, got {a.max_body_bytes}")
    api_key = a.api_key if a.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if api_key is not None and (api_key == "" or not api_key.isprintable()):
        raise UserError("--api-key must be non-empty printable text")
    _check_port(a.host, a.port)

    import uvicorn

    from runtime.api import Model
    from runtime.engine import Engine
    from runtime.openai_app import create_app
    from runtime.sampling import SamplingParams
    from runtime.text import load_tokenizer, render_chat

    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    module, model_dir = open_module(a.compiled_dir, a.model_dir)
    tok = load_tokenizer(model_dir)
    render_chat(model_dir, [{"role": "user", "content": "x"}])  # a broken chat template fails now, not per request
    model = Model(module, model_dir, a.adapter, verbose=True)
    model._tokenizer = tok
    list(model.generate([0], 2, SamplingParams(), set()))  # warm-up: the first request pays no pipeline setup
    engine = Engine(model, a.max_queue)
    app = create_app(engine, a.model_name or model_dir.name, api_key, a.max_body_bytes, a.log_prompts)
    where = f"http://{a.host}:{a.port}"
    print(f"serving {a.model_name or model_dir.name} on {model.device.name} at {where}/v1 (context "
          f"{model.max_context} tokens; {'API key required' if api_key else 'no API key'}); Ctrl-C stops",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, access_log=True,
                    timeout_graceful_shutdown=2)
    finally:
        engine.close()
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail with one line before the weights are uploaded if the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None


if __name__ == "__main__":
    sys.exit(main())
