"""An OpenAI-compatible HTTP server on the one generation loop (`mlxsmall serve`).

Built on mlx-lm's server: its ``APIHandler`` reads requests, validates the sampling
parameters and writes OpenAI's response objects and server-sent events. What is ours, and why:

- ``ModelWorker`` replaces mlx-lm's ``ResponseGenerator``. mlx-lm's loads models with its own
  loader (no MobileLLM/MobiLlama, no --dtype rules) and runs its own batched loop; ours runs
  ``mlxsmall.generation.stream_generate``, the loop the CLI uses, so stop strings, TTFT and the
  events on ``mlxsmall.events`` are the same. One thread owns the model and its KV cache:
  requests wait in a queue and are served one at a time, never interleaved into one cache.
- ``Handler.do_POST`` answers bad requests with OpenAI's error object and a 4xx status
  (mlx-lm writes ``{"error": "text"}``, and a 404 for a failed generation), and checks the
  prompt against the context before the request is queued.
- ``GET /v1/mlxsmall/events`` streams the metrics feed (server-sent events) for
  ``mlxsmall dashboard --attach``; an optional API key guards a server that listens on a LAN.
"""

import collections
import dataclasses
import hmac
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

from mlx_lm.generate import make_text_state_machine
from mlx_lm.server import APIHandler, CompletionRequest, GenerationContext, Response, process_message_content

from . import events
from .chat import plain_transcript
from .generation import stream_generate
from .measure import memory_snapshot

EVENTS_PATH = "/v1/mlxsmall/events"
EVENT_KINDS = ("generation", "telemetry", "serve")
MEMORY_EVERY_S = 0.5
EVENTS_EVERY_S = 0.1  # token events sent to a watcher are merged to at most 10 a second


@dataclass
class TokenizedRequest(CompletionRequest):
    """mlx-lm's request plus what we work out before queueing it."""

    tokens: List[int] = field(default_factory=list)
    stop: List[str] = field(default_factory=list)  # the model's own stop strings (chat)
    generation_tokens: Optional[int] = None  # set by the worker: tokens generated so far


class RequestError(Exception):
    """A bad request, answered with OpenAI's error object."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


class ModelWorker:
    """Owns the model: one thread generates for one request at a time, the rest wait in a queue.

    Speaks the interface mlx-lm's ``APIHandler`` expects of its ``ResponseGenerator``:
    ``generate(request, args, progress_callback)`` returns ``(GenerationContext, responses)``.
    """

    def __init__(self, model, tokenizer, model_id: str, *, context_length: int, stop=(), chat_stop=(),
                 max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.context_length = context_length
        self.stop = list(stop)  # for every request (--stop)
        self.chat_stop = list(chat_stop)  # for chat requests: the model's generation_config.json
        # The defaults and switches APIHandler reads from mlx-lm's command line.
        self.cli_args = SimpleNamespace(
            model=model_id, max_tokens=max_tokens, temp=temperature, top_p=top_p, top_k=top_k,
            min_p=0.0, num_draft_tokens=0, allowed_origins=["*"], chat_template_args={},
        )
        self.text_machine = make_text_state_machine(tokenizer, [])  # stop strings are ours
        self.requests: queue.Queue = queue.Queue()
        self.active = 0
        self.served = 0
        self._thread = threading.Thread(target=self._run, name="mlxsmall-serve-worker", daemon=True)
        self._thread.start()

    @property
    def is_healthy(self) -> bool:
        return self._thread.is_alive()

    @property
    def queue_length(self) -> int:
        """Requests waiting or being served."""
        return self.requests.qsize() + self.active

    def close(self):
        self.requests.put(None)

    def generate(self, request: TokenizedRequest, args, progress_callback=None):
        responses: queue.Queue = queue.Queue()
        ctx = GenerationContext(
            has_tool_calling=self.tokenizer.has_tool_calling, has_thinking=self.tokenizer.has_thinking,
            tool_parser=self.tokenizer.tool_parser, text_sm=self.text_machine, initial_state="normal",
            prompt=request.tokens, prompt_cache_count=0,
        )
        self.requests.put((responses, ctx, request, args))
        events.publish("serve", phase="queued", queue=self.queue_length)

        def stream():
            while True:
                try:
                    item = responses.get(timeout=1.0)
                except queue.Empty:
                    if not self.is_healthy:
                        raise RuntimeError("the generation thread died") from None
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item

        return ctx, stream()

    def _run(self):
        while True:
            item = self.requests.get()
            if item is None:
                return
            responses, ctx, request, args = item
            self.active = 1
            cancelled = True
            try:
                if not ctx._should_stop:  # the client left while waiting
                    cancelled = self._serve(responses, ctx, request, args)
            except Exception as error:  # reported to the request's handler, the worker lives on
                responses.put(error)
            finally:
                self.active = 0
                self.served += 1
                responses.put(None)
                events.publish("serve", phase="done", queue=self.queue_length, served=self.served,
                               cancelled=cancelled, generation_tokens=request.generation_tokens or 0)
                events.publish("telemetry", memory=memory_snapshot())

    def _serve(self, responses, ctx, request: TokenizedRequest, args):
        events.publish("serve", phase="start", queue=self.queue_length)
        steps = stream_generate(
            self.model, self.tokenizer, request.tokens, max_tokens=args.max_tokens,
            temperature=args.sampling.temperature, top_p=args.sampling.top_p, top_k=args.sampling.top_k,
            min_p=args.sampling.min_p, repetition_penalty=args.logits.repetition_penalty or None,
            seed=args.seed, stop=self.stop + request.stop + list(args.stop_words),
        )
        last_memory = time.perf_counter()
        try:
            for step in steps:
                request.generation_tokens = step.generation_tokens
                # APIHandler drops the text of a "stop" response (mlx-lm's carries the stop word);
                # ours carries the text before the stop string, so it goes out first.
                if step.finish_reason == "stop" and step.text:
                    responses.put(Response(step.text, step.token, 0.0, None, ()))
                    responses.put(Response("", step.token, 0.0, "stop", ()))
                else:
                    responses.put(Response(step.text, step.token, 0.0, step.finish_reason, ()))
                now = time.perf_counter()
                if now - last_memory > MEMORY_EVERY_S:
                    events.publish("telemetry", memory=memory_snapshot())
                    last_memory = now
                if ctx._should_stop:  # the client disconnected: free the slot
                    return True
        finally:
            steps.close()
        return False


# --------------------------------------------------------------------------- requests


SAMPLING_DEFAULTS = dict(
    top_k=None, min_p=None, repetition_penalty=0.0, repetition_context_size=20, presence_penalty=0.0,
    presence_context_size=20, frequency_penalty=0.0, frequency_context_size=20, xtc_probability=0.0,
    xtc_threshold=0.1, logit_bias=None, logprobs=False, top_logprobs=-1, seed=None,
    chat_template_kwargs=None, adapter=None,
)


class Handler(APIHandler):
    """mlx-lm's handler with our request checks, error objects, API key and events feed."""

    api_key: Optional[str] = None
    model_ids: tuple = ()

    def log_message(self, format, *args):  # one line per request in the log, not on stderr
        logging.getLogger("mlxsmall.serve").info("%s " + format, self.address_string(), *args)

    def send_error_object(self, error: RequestError):
        body = json.dumps(error.body()).encode()
        self.send_response(error.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self._set_cors_headers()
        self.end_headers()
        self.wfile.write(body)

    def check_key(self):
        if self.api_key is None:
            return
        sent = self.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(sent, f"Bearer {self.api_key}".encode()):
            raise RequestError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                               code="invalid_api_key", kind="authentication_error")

    def do_GET(self):
        try:
            self.check_key()
        except RequestError as error:
            return self.send_error_object(error)
        if self.path == EVENTS_PATH:
            return self.stream_events()
        if self.path.startswith("/v1/models"):
            models = [{"id": name, "object": "model", "created": self.created, "owned_by": "mlxsmall"}
                      for name in self.model_ids]
            return self.send_json({"object": "list", "data": models})
        if self.path == "/health":
            return self.send_json({"status": "ok" if self.response_generator.is_healthy else "unavailable"})
        self.send_error_object(RequestError(404, f"no such endpoint: GET {self.path}", code="not_found"))

    def send_json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self._set_completion_headers(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        try:
            self.check_key()
            request, stop_words = self.parse_request_body()
        except RequestError as error:
            return self.send_error_object(error)
        self.current = request
        try:
            self.handle_completion(request, stop_words)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left; handle_completion's `finally` has told the worker to stop

    def parse_request_body(self):
        routes = {"/v1/completions": self.handle_text_completions,
                  "/v1/chat/completions": self.handle_chat_completions,
                  "/chat/completions": self.handle_chat_completions}
        if self.path not in routes:
            raise RequestError(404, f"no such endpoint: POST {self.path}", code="not_found")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "a Content-Length header is required") from None
        raw = self.rfile.read(length)
        try:
            self.body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(400, f"the request body is not valid JSON: {error}") from None
        if not isinstance(self.body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        body, cli = self.body, self.response_generator.cli_args

        # The attributes APIHandler.handle_completion reads, as mlx-lm's do_POST sets them.
        self.stream = body.get("stream", False)
        self.stream_options = body.get("stream_options")
        self.requested_model = body.get("model", "default_model")
        self.requested_draft_model = "default_model"
        self.num_draft_tokens = 0
        self.max_tokens = body.get("max_completion_tokens", body.get("max_tokens", cli.max_tokens))
        self.temperature = body.get("temperature", cli.temp)
        self.top_p = body.get("top_p", cli.top_p)
        for name, default in SAMPLING_DEFAULTS.items():
            setattr(self, name, body.get(name, default))
        self.adapter = body.get("adapters")
        self.top_k = cli.top_k if self.top_k is None else self.top_k
        self.min_p = cli.min_p if self.min_p is None else self.min_p
        for name in ("temperature", "top_p", "max_tokens", "repetition_penalty"):
            if getattr(self, name) is None:  # JSON null: the default
                setattr(self, name, {"temperature": cli.temp, "top_p": cli.top_p,
                                     "max_tokens": cli.max_tokens, "repetition_penalty": 0.0}[name])
        try:
            self.validate_model_parameters()
        except ValueError as error:
            param = str(error).split(" ")[0]
            raise RequestError(400, str(error), param=param) from None
        if self.stream_options is not None and not isinstance(self.stream_options, dict):
            raise RequestError(400, "stream_options must be an object", param="stream_options")
        if self.adapter is not None:
            raise RequestError(400, "adapters are not supported by mlxsmall serve", param="adapters")
        if self.logprobs or self.top_logprobs > 0:
            raise RequestError(400, "logprobs are not supported by mlxsmall serve", param="logprobs")
        if self.requested_model not in (*self.model_ids, "default_model"):
            raise RequestError(404, f"the model '{self.requested_model}' does not exist; this server has "
                               f"{', '.join(self.model_ids)}", param="model", code="model_not_found")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError(400, "stop must be a string or a list of strings", param="stop")

        base = routes[self.path]
        if base == self.handle_chat_completions:
            tokens, model_stop = self.chat_tokens(body.get("messages"))
        else:
            tokens, model_stop = self.completion_tokens(body.get("prompt")), []
        request = base()  # sets request_id and object_type the way mlx-lm does
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(CompletionRequest)}
        request = TokenizedRequest(**fields, tokens=tokens, stop=model_stop)

        context = self.response_generator.context_length
        if len(tokens) >= context:
            raise RequestError(400, f"the prompt has {len(tokens)} tokens; this model's context is {context}",
                               param="messages" if base == self.handle_chat_completions else "prompt",
                               code="context_length_exceeded")
        self.max_tokens = min(self.max_tokens, context - len(tokens))
        return request, stop

    def chat_tokens(self, messages):
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages must be a non-empty list", param="messages")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise RequestError(400, "each message needs a 'role' and 'content'", param="messages")
        try:
            process_message_content(messages)  # text parts -> one string, as mlx-lm does
        except (ValueError, KeyError, TypeError) as error:
            raise RequestError(400, f"messages: {error}", param="messages") from None
        tokenizer, worker = self.response_generator.tokenizer, self.response_generator
        if getattr(tokenizer, "chat_template", None):
            tokens = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(tokens), list(worker.chat_stop)
        # Same transcript as `mlxsmall chat` for models without a template.
        return tokenizer.encode(plain_transcript(messages)), list(worker.chat_stop) + ["\nUser:"]

    def completion_tokens(self, prompt):
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if not isinstance(prompt, str):
            raise RequestError(400, "prompt must be a string (or a list of token ids)", param="prompt")
        from .generation import encode_prompt

        return encode_prompt(self.response_generator.tokenizer, prompt)

    # Usage counts the tokens the generation loop made (the handler would count its responses).
    def generate_response(self, text, finish_reason, prompt_token_count=None, completion_token_count=None,
                          *args, **kwargs):
        if completion_token_count is not None and self.current.generation_tokens is not None:
            completion_token_count = self.current.generation_tokens
        return super().generate_response(text, finish_reason, prompt_token_count, completion_token_count,
                                         *args, **kwargs)

    def completion_usage_response(self, prompt_token_count=None, completion_token_count=None,
                                  prompt_cache_count=None):
        if self.current.generation_tokens is not None:
            completion_token_count = self.current.generation_tokens
        response = super().completion_usage_response(prompt_token_count, completion_token_count, prompt_cache_count)
        response["object"] = self.object_type  # mlx-lm says "chat.completion" for text completions too
        return response

    # --- the metrics feed -------------------------------------------------------------------

    def stream_events(self):
        """Server-sent events: every "serve" and "telemetry" event, and "generation" events with
        the token steps merged to at most ten a second (their text joined), until the client leaves."""
        pending: collections.deque = collections.deque()
        wake = threading.Event()

        def collect(event):
            if event.kind in EVENT_KINDS:
                pending.append(event)
                wake.set()

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self._set_cors_headers()
        self.end_headers()
        unsubscribe = events.subscribe(collect)
        try:
            self.write_event(events.Event("serve", {"phase": "hello", "queue": self.response_generator.queue_length,
                                                    "model": self.model_ids[0]}))
            self.write_event(events.Event("telemetry", {"memory": memory_snapshot()}))
            last_write = time.monotonic()
            while True:
                wake.wait(timeout=5.0)
                wake.clear()
                time.sleep(EVENTS_EVERY_S)
                batch = []
                while pending:
                    batch.append(pending.popleft())
                for event in merge_token_events(batch):
                    self.write_event(event)
                if not batch and time.monotonic() - last_write > 5.0:
                    self.wfile.write(b": keepalive\n\n")  # finds out when the watcher has gone
                    self.wfile.flush()
                last_write = time.monotonic() if batch else last_write
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            unsubscribe()

    def write_event(self, event):
        payload = {"kind": event.kind, "time": event.time, "fields": to_json(event.fields)}
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()


def merge_token_events(batch):
    """Consecutive "generation" token events become one (text joined, the last step's numbers)."""
    merged = []
    for event in batch:
        last = merged[-1] if merged else None
        if (event.kind == "generation" and event.get("phase") == "token" and last is not None
                and last.kind == "generation" and last.get("phase") == "token"):
            fields = dict(event.fields, text=last.get("text", "") + event.get("text", ""))
            merged[-1] = events.Event("generation", fields, event.time)
        else:
            merged.append(event)
    return merged


def to_json(fields: dict) -> dict:
    return {key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            for key, value in fields.items()}


# --------------------------------------------------------------------------- the server


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a watcher's open event stream does not keep the process alive


def make_server(model, tokenizer, model_dir, *, host="127.0.0.1", port=8080, api_key=None,
                model_id=None, max_tokens=256, temperature=0.0, top_p=1.0, top_k=0, stop=(),
                context_length=None) -> Server:
    """A ready server (``serve_forever()`` runs it; ``shutdown()`` stops it)."""
    from .loading import read_config, stop_strings

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    context = context_length or config.get("max_position_embeddings") or 2048
    model_id = model_id or model_dir.name
    worker = ModelWorker(model, tokenizer, model_id, context_length=context, stop=stop,
                         chat_stop=stop_strings(model_dir), max_tokens=max_tokens, temperature=temperature,
                         top_p=top_p, top_k=top_k)
    ids = tuple(dict.fromkeys([model_id, str(model_dir), str(model_dir.resolve())]))

    class BoundHandler(Handler):
        pass

    BoundHandler.api_key, BoundHandler.model_ids = api_key, ids

    server = Server((host, port), lambda *args, **kwargs: BoundHandler(worker, *args, **kwargs))
    server.worker = worker
    return server
