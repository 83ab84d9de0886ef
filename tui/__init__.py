"""The Textual dashboard (`mlxsmall dashboard`): chat with a model while watching tok/s, TTFT,
memory and power; a bench view sweeps quantization levels. The library never imports this.

    from mlxsmall.tui import DashboardApp, run_dashboard
"""


def __getattr__(name):
    # Lazy: importing the package must not pull Textual in until the app is wanted.
    if name in ("DashboardApp", "run_dashboard"):
        from mlxsmall.tui import app

        return getattr(app, name)
    raise AttributeError(f"module 'mlxsmall.tui' has no attribute {name!r}")
