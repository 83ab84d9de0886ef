"""What the dashboard knows, folded from the metrics feed (``mlxsmall.events``).

Pure Python and independent of Textual, so it is easy to test and the same fold serves any
view. ``DashboardMetrics.apply(event)`` takes "generation" events (from the one generation
loop) and "telemetry" events (memory snapshots and energy windows from the dashboard's worker).
"""

from dataclasses import dataclass, field
from typing import List, Optional

from mlxsmall.events import Event
from mlxsmall.measure import MemorySnapshot

HISTORY = 120  # points kept for sparklines


@dataclass
class RequestResult:
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    time_to_first_token: float
    joules_per_token: Optional[float] = None


@dataclass
class DashboardMetrics:
    generating: bool = False
    prompt_tokens: int = 0
    prompt_tps: Optional[float] = None
    generation_tokens: int = 0
    generation_tps: Optional[float] = None
    time_to_first_token: Optional[float] = None
    total_tokens: int = 0  # over the whole session
    request_tps: List[float] = field(default_factory=list)  # tok/s as this request went on
    requests: List[RequestResult] = field(default_factory=list)
    memory: Optional[MemorySnapshot] = None
    watts: Optional[float] = None
    joules_per_token: Optional[float] = None
    queue_length: Optional[int] = None  # requests waiting or running on an attached server
    server_model: Optional[str] = None
    text: str = ""  # text of the request in progress (or the last one)
    started: int = 0  # requests started so far (to tell a new answer from the last one)
    version: int = 0  # bumped on every change, so a view redraws only when needed

    def apply(self, event: Event) -> None:
        if event.kind == "generation":
            self._generation(event)
        elif event.kind == "telemetry":
            self._telemetry(event)
        elif event.kind == "serve":
            self._serve(event)
        else:
            return
        self.version += 1

    def _generation(self, event: Event) -> None:
        phase = event.get("phase")
        if phase == "start":
            self.generating = True
            self.started += 1
            self.text = ""
            self.request_tps = []
            self.generation_tokens = 0
            self.prompt_tokens = event.get("prompt_tokens", 0)
            return
        self.text += event.get("text", "")
        previous = self.generation_tokens
        self.generation_tokens = event.get("generation_tokens", previous)
        self.total_tokens += max(0, self.generation_tokens - previous)
        self.prompt_tokens = event.get("prompt_tokens", self.prompt_tokens)
        self.prompt_tps = event.get("prompt_tps", self.prompt_tps)
        self.time_to_first_token = event.get("time_to_first_token", self.time_to_first_token)
        tps = event.get("generation_tps")
        if tps is not None and self.generation_tokens > 1:  # the first token's rate is meaningless
            self.generation_tps = tps
            self.request_tps = (self.request_tps + [tps])[-HISTORY:]
        if phase == "done":
            self.generating = False
            self.requests = (self.requests + [RequestResult(
                self.prompt_tokens, self.prompt_tps or 0.0, self.generation_tokens,
                self.generation_tps or 0.0, self.time_to_first_token or 0.0,
            )])[-HISTORY:]

    def _telemetry(self, event: Event) -> None:
        if "memory" in event.fields:
            self.memory = event["memory"]
        if "watts" in event.fields:
            self.watts = event["watts"]
        if "joules_per_token" in event.fields:
            self.joules_per_token = event["joules_per_token"]
            if self.requests and event.get("request_done"):
                self.requests[-1].joules_per_token = event["joules_per_token"]

    def _serve(self, event: Event) -> None:
        """`mlxsmall serve`'s queue: "hello" (a watcher attached), "queued", "start", "done"."""
        self.queue_length = event.get("queue", self.queue_length)
        if event.get("phase") == "hello":
            self.server_model = event.get("model")
        elif event.get("phase") == "done" and event.get("cancelled"):
            self.generating = False  # a client left: no "done" generation event comes

    def stopped(self) -> None:
        """A request ended without a "done" event (cancelled or failed)."""
        if self.generating:
            self.generating = False
            self.version += 1

    @property
    def per_request_tps(self) -> List[float]:
        return [request.generation_tps for request in self.requests]
