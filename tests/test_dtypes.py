"""One float-name table and one --dtype: every command takes the table's names, and every
run-time choice (the dashboard's too) loads through the same `load_options`."""

import argparse

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import mlx.core as mx
import pytest

from mlxsmall.cli import build_parser
from mlxsmall.dtypes import BY_NAME, RUN_CHOICES, load_options, short_name
from mlxsmall.hub import load
from mlxsmall.info import weights_dtype
from mlxsmall.loading import running_on_cpu


def dtype_option(command):
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in commands.choices[command]._actions if a.dest == "dtype")


def test_every_dtype_switch_reads_the_table():
    for command in ("chat", "generate", "serve", "dashboard"):
        action = dtype_option(command)
        assert list(action.choices) == list(RUN_CHOICES) and action.default == "auto"
    for command in ("convert", "export", "finetune"):
        action = dtype_option(command)
        assert list(action.choices) == list(BY_NAME) and action.default is None
    assert [short_name(name) for name in BY_NAME] == ["fp32", "fp16", "bf16"]


@pytest.mark.parametrize("choice", RUN_CHOICES)
def test_every_run_choice_loads(make_tiny_model, choice):
    model, _ = load(make_tiny_model("llama", bits=4), **load_options(choice))
    ran_as = weights_dtype(model)
    if choice == "stored" or (choice == "auto" and not running_on_cpu()):
        assert ran_as == "quantized"  # the quantized kernels, as saved
    elif choice == "auto":
        assert ran_as == "fp32"  # the CPU default: expanded to fp32
    else:
        assert ran_as == short_name(choice)
        assert model.model.norm.weight.dtype == getattr(mx, choice)


def test_the_dashboard_loads_as_chat_does(make_tiny_model):
    from mlxsmall.tui.app import DashboardApp

    path = make_tiny_model("llama", bits=4)
    _, _, _, _, ran_as = DashboardApp(path, dtype="stored")._load_job()  # `--dtype stored` failed here before
    assert ran_as == "quantized"
