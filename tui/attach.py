"""The dashboard's link to a running `mlxsmall serve`: its metrics feed in, prompts out.

``follow_feed`` reads the server's ``/v1/mlxsmall/events`` (server-sent events, one JSON object
per event) and hands each one over as an ``mlxsmall.events.Event``, so the dashboard folds a
server's events exactly like its own. ``remote_chat`` sends a chat to the server's OpenAI
endpoint (streamed, so that stopping it closes the connection and frees the server's slot).
Plain ``urllib``: these run on worker threads, never on the UI thread.
"""

import json
import threading
import urllib.error
import urllib.request
from typing import Callable, Optional

from mlxsmall.events import Event
from mlxsmall.measure import MemorySnapshot

EVENTS_PATH = "/v1/mlxsmall/events"


def base_url(url: str) -> str:
    """``http://host:port`` from what a user may type (with or without ``/v1``)."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _headers(api_key: Optional[str]) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def decode_event(payload: dict) -> Event:
    fields = dict(payload.get("fields") or {})
    if isinstance(fields.get("memory"), dict):
        fields["memory"] = MemorySnapshot(**fields["memory"])
    return Event(payload["kind"], fields, payload.get("time", 0.0))


class Feed:
    """Follows the server's event feed on a daemon thread until ``close()``; reconnects when the
    server goes away. ``on_event(event)`` and ``on_status(text)`` run on that thread."""

    def __init__(self, url: str, on_event: Callable[[Event], None], on_status: Callable[[str], None],
                 api_key: Optional[str] = None, retry_s: float = 2.0):
        self.url, self.api_key, self.retry_s = base_url(url), api_key, retry_s
        self.on_event, self.on_status = on_event, on_status
        self._closed = threading.Event()
        self._response = None
        self._thread = threading.Thread(target=self._run, name="mlxsmall-attach", daemon=True)

    def start(self) -> "Feed":
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        response = self._response
        if response is not None:
            try:
                response.close()  # unblocks the reader
            except Exception:
                pass

    def _run(self) -> None:
        reported = None
        while not self._closed.is_set():
            request = urllib.request.Request(self.url + EVENTS_PATH, headers=_headers(self.api_key))
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    self._response = response
                    self.on_status(f"attached to {self.url}")
                    reported = None
                    for raw in response:
                        if self._closed.is_set():
                            return
                        line = raw.decode("utf-8", "replace").strip()
                        if line.startswith("data: "):
                            self.on_event(decode_event(json.loads(line[6:])))
            except urllib.error.HTTPError as error:
                status = f"{self.url}: HTTP {error.code} ({'wrong --api-key?' if error.code == 401 else error.reason})"
            except (OSError, ValueError) as error:
                status = f"{self.url}: not reachable ({getattr(error, 'reason', error)}); retrying"
            else:
                status = f"{self.url}: the server closed the feed; retrying"
            if self._closed.is_set():
                return
            if status != reported:
                self.on_status(status)
                reported = status
            self._closed.wait(self.retry_s)


def remote_chat(url: str, messages, *, api_key=None, max_tokens: int = 256, sampling=None,
                cancelled: Optional[threading.Event] = None) -> tuple:
    """Stream a chat completion from the server; returns ``(text, stopped_early)``. Closing the
    connection when ``cancelled`` is set is what tells the server to stop."""
    sampling = sampling or {}
    body = {"messages": messages, "max_tokens": max_tokens, "stream": True,
            "temperature": sampling.get("temperature", 0.0), "top_p": sampling.get("top_p", 1.0)}
    if sampling.get("seed") is not None:
        body["seed"] = sampling["seed"]
    request = urllib.request.Request(
        base_url(url) + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **_headers(api_key)},
    )
    text = []
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            for raw in response:
                if cancelled is not None and cancelled.is_set():
                    return "".join(text), True
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    text.append((choice.get("delta") or {}).get("content") or "")
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read())["error"]["message"]
        except Exception:
            message = f"HTTP {error.code}"
        raise RuntimeError(f"the server refused the request: {message}") from None
    return "".join(text), False
