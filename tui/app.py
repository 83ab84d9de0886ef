"""`mlxsmall dashboard`: chat with a model and watch its speed, memory and power live.

Data flow: the one generation loop publishes "generation" events on ``mlxsmall.events``; the
dashboard's MLX worker publishes "telemetry" events (memory snapshots, energy per token). The
app subscribes once, queues events from whatever thread publishes them, and folds them into
``DashboardMetrics`` ten times a second on the UI thread. All MLX work (load, generate, bench)
runs on one ``MLXWorker`` thread; results come back as messages.
"""

import collections
import time
from pathlib import Path
from typing import Optional

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Input, TabbedContent, TabPane

from mlxsmall import events
from mlxsmall.measure import (
    EnergyWindow,
    PowerMeter,
    PowerSampler,
    UnavailableMeter,
    memory_snapshot,
)

from mlxsmall.measure import sweep as bench_lib
from mlxsmall.tui.metrics import DashboardMetrics
from mlxsmall.tui.widgets import BenchView, ChatLog, MemoryPowerPanel, ModelPanel, SpeedPanel
from mlxsmall.tui.worker import Cancelled, MLXWorker

# Redraw rate and memory sampling: often enough to watch tokens arrive, rarely enough that
# the UI thread takes little CPU from generation (measured by bench/bench_dashboard.py).
MEMORY_EVERY_S = 0.5
REFRESH_EVERY_S = 0.5


class JobDone(Message):
    """A worker job finished (``error`` set when it raised)."""

    def __init__(self, name: str, result=None, error: Optional[BaseException] = None):
        super().__init__()
        self.name, self.result, self.error = name, result, error


class FeedStatus(Message):
    """The link to an attached server changed (connected, lost, refused)."""

    def __init__(self, status: str):
        super().__init__()
        self.status = status


class BenchProgress(Message):
    def __init__(self, status: str, report=None):
        super().__init__()
        self.status, self.report = status, report


class DashboardApp(App):
    """The dashboard. ``model_path=None`` starts without a model (tests inject data)."""

    CSS_PATH = "dashboard.tcss"
    ENABLE_COMMAND_PALETTE = False  # keeps the footer for our keys at 80 columns
    TITLE = "mlxsmall dashboard"
    BINDINGS = [
        Binding("ctrl+c", "quit", "Quit", priority=True),
        Binding("q", "quit", "Quit", show=False),
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+o", "toggle_view", "Chat/Bench", priority=True),
        Binding("ctrl+r", "run_bench", "Run bench", priority=True),
        Binding("ctrl+s", "export_bench", "Export", priority=True),
        Binding("ctrl+t", "toggle_theme", "Theme", priority=True),
    ]

    def __init__(
        self,
        model_path=None,
        *,
        dtype: str = "auto",
        max_tokens: int = 256,
        chat: bool = True,
        sampling: Optional[dict] = None,
        stop=(),
        bench_config: bench_lib.BenchConfig = bench_lib.BenchConfig(),
        export_dir=".",
        meter: Optional[PowerMeter] = None,
        theme: str = "textual-dark",
        attach: Optional[str] = None,
        api_key: Optional[str] = None,
    ):
        super().__init__()
        self.attach = attach  # URL of a running `mlxsmall serve` to watch (and chat through)
        self.api_key = api_key
        self._feed = None
        self._feed_status = "connecting…"
        self._remote_messages: list = []
        self.model_path = Path(model_path) if model_path else None
        self.dtype = dtype
        self.max_tokens = max_tokens
        self.chat_mode = chat
        self.sampling = sampling or {}
        self.stop = tuple(stop)  # raw mode only; chat mode stops where the template says
        self.bench_config = bench_config
        self.export_dir = Path(export_dir)
        self.meter = meter
        self.initial_theme = theme
        self.metrics = DashboardMetrics()
        self.bench_report: Optional[bench_lib.BenchReport] = None
        self.busy: Optional[str] = None  # "load", "chat" or "bench" while a job runs
        self.session = None  # ChatSession, created on the worker
        self.model = self.tokenizer = None
        self.facts = None
        self._events: collections.deque = collections.deque()
        self._shown_version = -1
        self._reply = None  # the Static the current answer streams into
        self._reply_request = 0  # metrics.started value of the request streaming into _reply
        self.worker: Optional[MLXWorker] = None
        self._unsubscribe = None
        self._power_sampler: Optional[PowerSampler] = None

    # --- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with TabbedContent(id="tabs"):
            with TabPane("Chat", id="chat-tab"):
                with Horizontal(id="chat-screen"):
                    with Vertical(id="chat-pane"):
                        yield ChatLog(id="chat-log")
                        yield Input(placeholder="Type a prompt, Enter to send", id="prompt")
                    with VerticalScroll(id="side"):
                        yield SpeedPanel(id="speed", classes="panel")
                        yield MemoryPowerPanel(self.meter or UnavailableMeter("measuring…"),
                                               id="memory", classes="panel")
                        yield ModelPanel(id="model", classes="panel")
            with TabPane("Bench", id="bench-tab"):
                yield BenchView(id="bench")
        yield Footer()

    def on_mount(self) -> None:
        self.theme = self.initial_theme
        if self.meter is None:
            from mlxsmall.measure import open_power_meter

            self.meter = open_power_meter()
            self.query_one(MemoryPowerPanel).meter = self.meter
        if self.meter.available:
            self._power_sampler = PowerSampler(self.meter)
            self.set_interval(1.0, self._sample_power)
        self._unsubscribe = events.subscribe(self._queue_event)
        self.set_interval(REFRESH_EVERY_S, self.drain_events)
        self.query_one(BenchView).set_status(self._bench_intro())
        self.refresh_panels(force=True)
        self.query_one("#prompt", Input).focus()
        if self.model_path is not None:
            self.worker = MLXWorker()
            self._start("load", self._load_job)
        elif self.attach:
            from mlxsmall.tui.attach import Feed

            self.worker = MLXWorker(name="server-client")  # sends prompts; the server does the MLX work
            # The feed thread only appends to the event queue (thread-safe), like a local publisher.
            self._feed = Feed(self.attach, self._events.append,
                              lambda status: self.post_message(FeedStatus(status)), api_key=self.api_key).start()

    def _bench_intro(self) -> str:
        config = self.bench_config
        lengths = "/".join(str(n) for n in config.prompt_lengths)
        return (f"Sweep: prompt {lengths}, generate {config.generation_tokens}, "
                f"{config.repeats} runs each (mean ± std). Ctrl+R runs, Ctrl+S exports JSON/CSV/MD.")

    # --- the metrics feed ---------------------------------------------------------------------

    def _queue_event(self, event) -> None:
        # Runs on the publisher's thread (the worker): only a thread-safe append here.
        if event.kind in ("generation", "telemetry", "serve"):
            self._events.append(event)

    def drain_events(self) -> None:
        """Fold queued events into the metrics and redraw what changed (UI thread)."""
        while self._events:
            self.metrics.apply(self._events.popleft())
        self.refresh_panels()

    def refresh_panels(self, force: bool = False) -> None:
        if not force and self.metrics.version == self._shown_version:
            return
        self._shown_version = self.metrics.version
        self.query_one(SpeedPanel).show(self.metrics)
        self.query_one(MemoryPowerPanel).show(self.metrics)
        if self.attach:
            self.query_one(ModelPanel).show_server(self.attach, self.metrics.server_model, self._feed_status)
        if self._reply is not None and self.metrics.started == self._reply_request:
            self.query_one(ChatLog).stream_into(self._reply, Text(self.metrics.text))

    def _sample_power(self) -> None:
        self.metrics.watts = self._power_sampler.watts()
        self.metrics.version += 1

    # --- jobs on the MLX worker ---------------------------------------------------------------

    def _start(self, name: str, job, *args) -> None:
        self.busy = name
        # A blinking cursor repaints twice a second; while MLX works, those frames are CPU taken
        # from generation (see bench/bench_dashboard.py).
        self.query_one("#prompt", Input).cursor_blink = False
        future = self.worker.submit(job, *args)

        def done(future):  # runs on the worker thread: hand over as a message
            if future.cancelled():
                self.post_message(JobDone(name, error=Cancelled()))
            elif future.exception() is not None:
                self.post_message(JobDone(name, error=future.exception()))
            else:
                self.post_message(JobDone(name, future.result()))

        future.add_done_callback(done)

    def _load_job(self):
        from mlxsmall.chat import ChatSession
        from mlxsmall.dtypes import load_options
        from mlxsmall.info import model_facts, weights_dtype
        from mlxsmall.hub import load

        model, tokenizer = load(self.model_path, **load_options(self.dtype))  # as `chat --dtype` loads
        facts = model_facts(self.model_path)
        # room for the history plus a full answer, even when --max-tokens is large
        session = ChatSession(model, tokenizer, max_tokens=self.max_tokens,
                              context_length=max(2048, self.max_tokens + 1024))
        run_dtype = weights_dtype(model)
        events.publish("telemetry", memory=memory_snapshot())
        return model, tokenizer, facts, session, run_dtype

    def _generate_job(self, prompt: str):
        """Stream one answer; energy per token is measured from the first token on."""
        from mlxsmall.generation import stream_generate

        if self.chat_mode:
            steps = self.session.send(prompt, **self.sampling)
        else:
            steps = stream_generate(self.model, self.tokenizer, prompt, max_tokens=self.max_tokens,
                                    stop=self.stop, **self.sampling)
        window, last, cancelled = None, None, False
        last_memory = time.perf_counter()
        try:
            for step in steps:
                if window is None:
                    window = EnergyWindow.begin(self.meter)
                last = step
                now = time.perf_counter()
                if now - last_memory > MEMORY_EVERY_S:
                    events.publish("telemetry", memory=memory_snapshot())
                    last_memory = now
                if self.worker.cancelled.is_set():
                    cancelled = True
                    break
        finally:
            steps.close()
        energy = window.stop(tokens=max(0, last.generation_tokens - 1)) if window and last else None
        events.publish("telemetry", memory=memory_snapshot(), request_done=not cancelled,
                       joules_per_token=energy.joules_per_token if energy else None)
        return cancelled

    def _bench_job(self):
        def on_row(row, done, total):
            self.post_message(BenchProgress(f"{done}/{total} done", report_so_far))

        def on_status(text):  # called between runs, on this (worker) thread
            events.publish("telemetry", memory=memory_snapshot())
            self.post_message(BenchProgress(text))

        report_so_far = bench_lib.BenchReport(str(self.model_path), self.bench_config, self.meter.describe())

        def collect(row, done, total):
            report_so_far.rows.append(row)
            on_row(row, done, total)

        report = bench_lib.run_sweep(self.model_path, self.bench_config, self.meter,
                                     check_cancel=self.worker.check, on_row=collect, on_status=on_status)
        events.publish("telemetry", memory=memory_snapshot())
        return report

    @on(JobDone)
    def job_done(self, message: JobDone) -> None:
        self.busy = None
        self.query_one("#prompt", Input).cursor_blink = True
        self.drain_events()
        if message.name == "load":
            if message.error is not None:
                self.query_one(ModelPanel).show_error(f"load failed: {_one_line(message.error)}")
                self.notify(_one_line(message.error), title="load failed", severity="error", timeout=10)
                return
            self.model, self.tokenizer, self.facts, self.session, run_dtype = message.result
            self.query_one(ModelPanel).show(self.facts, run_dtype)
            self.query_one(ChatLog).add("notice", f"{self.facts.path} loaded. Type a prompt.")
        elif message.name == "chat":
            self.metrics.stopped()
            if message.error is not None:
                self.query_one(ChatLog).add("error", f"error: {_one_line(message.error)}")
            elif message.result:
                self.query_one(ChatLog).add("notice", "[stopped]")
            for notice in getattr(self.session, "notices", []) if self.chat_mode else []:
                self.query_one(ChatLog).add("notice", notice)  # e.g. "context full: dropped the oldest turn"
            self._reply = None
            self.refresh_panels(force=True)
        elif message.name == "bench":
            self.metrics.stopped()
            bench_view = self.query_one(BenchView)
            if isinstance(message.error, Cancelled):
                bench_view.set_status("Bench stopped.")
            elif message.error is not None:
                bench_view.set_status(f"Bench failed: {_one_line(message.error)}")
            else:
                self.bench_report = message.result
                bench_view.show(self.bench_report)
                bench_view.set_status(f"Done: {len(self.bench_report.rows)} rows. Ctrl+S exports.")

    @on(FeedStatus)
    def feed_status(self, message: FeedStatus) -> None:
        self._feed_status = message.status
        self.refresh_panels(force=True)

    def _remote_chat_job(self, prompt: str):
        """Chat through the attached server; the answer streams in from its event feed."""
        from mlxsmall.tui.attach import remote_chat

        self._remote_messages.append({"role": "user", "content": prompt})
        answer, stopped = remote_chat(self.attach, self._remote_messages, api_key=self.api_key,
                                      max_tokens=self.max_tokens, sampling=self.sampling,
                                      cancelled=self.worker.cancelled)
        self._remote_messages.append({"role": "assistant", "content": answer.strip()})
        return stopped

    @on(BenchProgress)
    def bench_progress(self, message: BenchProgress) -> None:
        view = self.query_one(BenchView)
        view.set_status(f"Running: {message.status}  (Esc stops)")
        if message.report is not None:
            view.show(message.report)

    # --- user actions -------------------------------------------------------------------------

    @on(Input.Submitted, "#prompt")
    def send_prompt(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.session is None and not self.attach:
            self.notify("no model loaded yet", severity="warning")
            return
        if self.busy:
            self.notify(f"busy ({self.busy}): Esc stops it", severity="warning")
            return
        event.input.value = ""
        log = self.query_one(ChatLog)
        log.add("user", text)
        self._reply = log.add("assistant", "")
        self.drain_events()
        self._reply_request = self.metrics.started + 1
        self._start("chat", self._remote_chat_job if self.attach else self._generate_job, text)

    def action_stop(self) -> None:
        if self.worker is not None and self.busy in ("chat", "bench"):
            self.worker.cancel()

    def action_new_chat(self) -> None:
        if self.busy or (self.session is None and not self.attach):
            return
        log = self.query_one(ChatLog)
        log.remove_children()
        if self.attach:
            self._remote_messages = []
        else:
            self.worker.submit(self.session.reset)
        log.add("notice", "New conversation.")

    def show_view(self, pane: str) -> None:
        """Switch tabs. Focus moves too: a focused widget in the old pane would pull it back."""
        self.screen.set_focus(None)
        self.query_one(TabbedContent).active = pane
        if pane == "chat-tab":
            self.query_one("#prompt", Input).focus()
        else:
            self.query_one("#bench-table").focus()

    def action_toggle_view(self) -> None:
        active = self.query_one(TabbedContent).active
        self.show_view("bench-tab" if active == "chat-tab" else "chat-tab")

    def action_run_bench(self) -> None:
        if self.worker is None or self.model_path is None:
            self.notify("no model to bench", severity="warning")
            return
        if self.busy:
            self.notify(f"busy ({self.busy})", severity="warning")
            return
        self.show_view("bench-tab")
        self.query_one(BenchView).set_status("Starting the sweep…")
        self._start("bench", self._bench_job)

    def action_export_bench(self) -> None:
        if self.bench_report is None or not self.bench_report.rows:
            self.notify("no bench results yet: Ctrl+R runs the sweep", severity="warning")
            return
        try:
            paths = bench_lib.export(self.bench_report, self.export_dir)
        except OSError as error:
            self.notify(f"export failed: {error}", severity="error")
            return
        self.notify("\n".join(str(p) for p in paths), title="bench exported")

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def check_action(self, action: str, parameters) -> Optional[bool]:
        """Show each binding only where it does something."""
        try:
            on_bench = self.query_one(TabbedContent).active == "bench-tab"
        except Exception:
            return True
        if action == "export_bench":
            return on_bench
        if action == "new_chat":
            return not on_bench
        if action == "stop":
            return True if self.busy in ("chat", "bench") else None
        return True

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_bindings()

    async def action_quit(self) -> None:
        # Cancel first so a generation mid-token stops at its next step; the worker thread is
        # joined by run_dashboard (or on_unmount) after the UI has gone.
        if self.worker is not None:
            self.worker.cancel()
        self.exit()

    def on_unmount(self) -> None:
        if self._feed is not None:
            self._feed.close()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self.worker is not None:
            self.worker.stop(timeout=10)
        if self.meter is not None:
            self.meter.close()


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def run_dashboard(model_path, **options) -> None:
    """Run the dashboard in this terminal until the user quits."""
    app = DashboardApp(model_path, **options)
    try:
        app.run()
    finally:
        if app.worker is not None:
            app.worker.stop(timeout=10)
