"""The dashboard's panels. Each one renders plain data (metrics, model facts, bench rows);
none of them touches MLX."""

from typing import Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Label, Sparkline, Static

from mlxsmall.measure import PowerMeter

from mlxsmall.measure.sweep import COLUMNS, BenchReport, row_cells
from mlxsmall.tui.metrics import DashboardMetrics

DASH = "–"  # not measured yet (different from n/a: nothing can measure it)


def rate(value: Optional[float], unit: str = "tok/s") -> str:
    return DASH if value is None else f"{value:.1f} {unit}"


def gigabytes(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f} GB"


def count(value: float) -> str:
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return str(int(value))


def megabytes(value: float) -> str:
    return f"{value / 1e6:.1f} MB" if value < 1e9 else f"{value / 1e9:.2f} GB"


def rows(*pairs) -> Text:
    """Aligned ``label value`` lines."""
    text = Text()
    for index, (label, value) in enumerate(pairs):
        if index:
            text.append("\n")
        text.append(f"{label:<11}", style="dim")
        text.append(str(value))
    return text


def set_content(widget: Static, text: Text, layout: Optional[bool] = None) -> None:
    """Update a Static only when its text changed, and re-layout only when asked or when its
    line count changed: every redraw costs UI-thread CPU that generation would otherwise get.
    (Panels with ``layout=None`` hold short lines that never wrap.)"""
    shown = getattr(widget, "_shown", None)
    if shown == text:
        return
    if layout is None:
        layout = shown is None or shown.plain.count("\n") != text.plain.count("\n")
    widget._shown = text
    widget.update(text, layout=layout)


def set_data(sparkline: Sparkline, data) -> None:
    data = list(data)
    if sparkline.data != data:
        sparkline.data = data


class SpeedPanel(Vertical):
    """Generation and prompt speed, TTFT and token counts, with two sparklines."""

    def compose(self) -> ComposeResult:
        yield Static(id="speed-rate")
        with Horizontal(classes="spark-row"):
            yield Label("this req   ", classes="spark-label")
            yield Sparkline([], id="spark-request")
        with Horizontal(classes="spark-row"):
            yield Label("per req    ", classes="spark-label")
            yield Sparkline([], id="spark-requests")
        yield Static(id="speed-rest")

    def on_mount(self) -> None:
        self.border_title = "speed"

    def show(self, metrics: DashboardMetrics) -> None:
        status = " (running)" if metrics.generating else ""
        set_content(self.query_one("#speed-rate", Static),
                    rows(("generation", rate(metrics.generation_tps) + status)))
        set_data(self.query_one("#spark-request", Sparkline), metrics.request_tps)
        set_data(self.query_one("#spark-requests", Sparkline), metrics.per_request_tps)
        ttft = DASH if metrics.time_to_first_token is None else f"{metrics.time_to_first_token * 1000:.0f} ms"
        set_content(self.query_one("#speed-rest", Static), rows(
            ("prompt", rate(metrics.prompt_tps) + (f" ({metrics.prompt_tokens} tok)" if metrics.prompt_tokens else "")),
            ("TTFT", ttft),
            ("tokens", f"{metrics.generation_tokens} (session {metrics.total_tokens})"),
            *((("queue", str(metrics.queue_length)),) if metrics.queue_length is not None else ()),
        ))


class MemoryPowerPanel(Static):
    """MLX active/peak/cache memory, process RSS, power and energy per token."""

    def __init__(self, meter: PowerMeter, **kwargs):
        super().__init__(**kwargs)
        self.meter = meter

    def on_mount(self) -> None:
        self.border_title = "memory · power"

    def show(self, metrics: DashboardMetrics) -> None:
        memory = metrics.memory
        if memory is None:
            active = peak_cache = rss = DASH
        else:
            active, rss = gigabytes(memory.active_gb), gigabytes(memory.rss_gb)
            peak_cache = (f"{gigabytes(memory.peak_gb)[:-3]} / {gigabytes(memory.cache_gb)}"
                          if memory.peak_gb is not None else "n/a")
        text = rows(("MLX active", active), ("peak/cache", peak_cache), ("RSS", rss))
        if self.meter.available:
            text.append("\n")
            text.append_text(rows(
                ("power", DASH if metrics.watts is None else f"{metrics.watts:.2f} W"),
                ("J/token", DASH if metrics.joules_per_token is None else f"{metrics.joules_per_token:.3f} J"),
                ("source", self.meter.name),
            ))
        else:
            text.append("\n")
            text.append_text(rows(("power", "n/a"), ("J/token", "n/a")))
            text.append("\n" + self.meter.describe(), style="dim")
        set_content(self, text)


class ModelPanel(Static):
    """Architecture, parameters (applied and unique), bits and size."""

    def __init__(self, **kwargs):
        super().__init__(Text("loading…", style="dim"), **kwargs)

    def on_mount(self) -> None:
        self.border_title = "model"

    def show(self, facts, run_dtype: str = "") -> None:
        quantization = facts.quantization or {}
        stored = f"q{quantization['bits']}" if quantization.get("bits") else "float"
        bits = f"{stored}, {facts.bits_per_weight:.2f} b/w"
        if run_dtype:
            bits += f" → {run_dtype} run"
        self.border_title = "model: " + facts.path.rstrip("/").split("/")[-1][:28]
        self.update(rows(
            ("arch", f"{facts.architecture} {facts.layers}x{facts.hidden_size}"
                     + (f" ({facts.applications} app)" if facts.applications != facts.layers else "")),
            ("params", f"{count(facts.parameters)} ({count(facts.unique_parameters)} unique)"),
            ("bits", bits),
            ("size", f"{megabytes(facts.size_on_disk)} disk"),
        ))

    def show_server(self, url: str, model: Optional[str], status: str) -> None:
        self.border_title = "server"
        self.update(rows(("url", url), ("model", model or DASH), ("link", status)))

    def show_error(self, message: str) -> None:
        self.update(Text(message, style="bold red"))


class ChatLog(VerticalScroll):
    """The conversation: one Static per turn; the last assistant turn grows as tokens stream."""

    def add(self, role: str, text: str = "") -> Static:
        message = Static(Text(text), classes=f"message {role}")
        self.mount(message)
        self.scroll_end(animate=False)
        return message

    def stream_into(self, message: Static, text: Text) -> None:
        """Show the answer so far. A full re-layout (costly: the whole screen) happens only when
        the wrapped answer gains a line; otherwise just that widget repaints."""
        if getattr(message, "_shown", None) == text:
            return
        width = max(1, message.content_region.width or message.size.width or 1)
        height = len(text.wrap(self.app.console, width)) if text.plain else 0
        grew = height != getattr(message, "_shown_height", None)
        message._shown, message._shown_height = text, height
        message.update(text, layout=grew)
        if grew:
            self.scroll_end(animate=False)


class BenchView(Vertical):
    """Sweep status, the results table and a bar chart of generation tok/s."""

    def compose(self) -> ComposeResult:
        yield Static(id="bench-status")
        yield DataTable(id="bench-table", zebra_stripes=True, cursor_type="none")
        try:
            from textual_plotext import PlotextPlot
        except ImportError:  # the chart is a nicety; the table carries the numbers
            yield Static("(install textual-plotext for the chart)", id="bench-chart")
        else:
            yield PlotextPlot(id="bench-chart")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*COLUMNS)

    def set_status(self, text: str) -> None:
        self.query_one("#bench-status", Static).update(Text(text))

    def show(self, report: Optional[BenchReport]) -> None:
        table = self.query_one(DataTable)
        table.clear()
        rows_ = report.rows if report else []
        for row in rows_:
            table.add_row(*row_cells(row, sep="±"))
        chart = self.query_one("#bench-chart")
        if not hasattr(chart, "plt"):
            return
        plt = chart.plt
        plt.clear_data()
        plt.clear_figure() if hasattr(plt, "clear_figure") else None
        plt.title("generation tok/s (mean)")
        if rows_:
            plt.bar([f"{row.level}/{row.prompt_length}" for row in rows_],
                    [row.generation_tps.mean for row in rows_])
        chart.refresh()
