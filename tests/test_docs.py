"""Every command and code block of README.md and docs/**/*.md, run as written, offline, from a
clean HOME (the `mlxsmall` program in a subprocess, as a user types it).

Blocks tagged bash/sh/python run; untagged blocks run when every line is an `mlxsmall` command
(the docs' command synopses). Each command must succeed, except that a command naming a model or
file that exists only online (or is a placeholder such as ./model) must fail with the one-line
message, never a traceback. Commands that cannot run here are listed in SKIP with the reason;
the ones that run the real default model are marked slow (CI runs them; so does --runslow).
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from user_cli import assert_one_line_error, mlxsmall, user_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))

# Commands that cannot run in a test, by prefix, with the reason.
SKIP = {
    "bash scripts/install.sh": "installs the tool and its dependencies from the package registries "
                               "(network, minutes); .ci/run runs it first on a clean machine",
    "python -m pytest": "the test suite itself",
    "mlxsmall dashboard": "a full-screen terminal app that runs until quit (tests/test_tui*.py drive it)",
    "mlxsmall serve": "a server that runs until stopped (docs/serve.md's block starts and stops one; "
                      "tests/test_serve.py drives it with the openai client)",
    "mlx.launch": "starts several training processes (tests/test_train_distributed.py runs two)",
}
SKIP_FILES = {
    "docs/eval/README.md": "reproduces a published table (30 minutes to hours on 2 cores each); "
                           "tests/test_eval_*.py and test_bench.py run the same code on tiny models",
}
# Commands that take minutes with the real default model on 2 CPU cores.
SLOW = ("mlxsmall eval", "mlxsmall bench", "mlxsmall finetune", "mlxsmall fuse", "mlxsmall pretrain",
        "mlxsmall vlm train")
# Everything else that runs the real default model (seconds to minutes each) is slow too, but these.
QUICK = ("mlxsmall models",)
# A command that names one of these needs something that exists only online (a Hugging Face
# checkpoint) or a placeholder path the reader replaces: offline it must fail in one line.
ONLINE_OR_PLACEHOLDER = re.compile(
    r"mobillama|mobilellm|facebook/|openai/|clip-vit|llava|my-vlm|\./vlm|\./model\b|TOKDIR|corpus|"
    r"captions\.jsonl|data/|data\.jsonl|\[--|\.\.\.|example\.com|smollm2\b(?!-)")


# A block that needs a shell (a loop, a here-document, a command in the background, $(...))
# runs as one bash script, stopped with its process group at the end.
SHELL_SCRIPT = re.compile(r"<<|\$\(|(?<!&)&(?!&)\s|^\s*(for|while|if)\s", re.M)


def fenced_blocks(path: Path):
    """``(language, first line number, text)`` of each fenced block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    block, language, start = None, None, 0
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if block is None:
                block, language, start = [], line[3:].strip().lower(), number + 1
            else:
                yield language, start, "\n".join(block)
                block = None
        elif block is not None:
            block.append(line)


def shell_commands(text: str):
    """``(line offset, command)`` for each command: continuations joined, comments dropped,
    `a && b` split into its commands."""
    joined, offset, pending = [], 0, ""
    for index, line in enumerate(text.splitlines()):
        if not pending:
            offset = index
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((offset, pending + line))
        pending = ""
    for offset, line in joined:
        words = shlex.split(line, comments=True)
        command = []
        for word in words + ["&&"]:
            if word == "&&":
                if command:
                    yield offset, command
                command = []
            else:
                command.append(word)


def doc_cases():
    cases = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for language, start, text in fenced_blocks(path):
            if language == "python":  # runs the real default model
                cases.append(pytest.param(name, "python", text, id=f"{name}:{start}", marks=pytest.mark.slow))
                continue
            if language in ("bash", "sh") and SHELL_SCRIPT.search(text):  # a script, not a list of commands
                cases.append(pytest.param(name, "script", text, id=f"{name}:{start}:script", marks=pytest.mark.slow))
                continue
            if language not in ("", "bash", "sh", "shell", "console"):
                continue  # text, json, a diagram: nothing to run
            commands = list(shell_commands(text))
            if language not in ("bash", "sh", "shell", "console"):
                if language or not commands or not all(c[0] == "mlxsmall" for _, c in commands):
                    continue  # a diagram or a listing, not commands
            for offset, command in commands:
                line = shlex.join(command)
                runs_default_model = not ONLINE_OR_PLACEHOLDER.search(line) and not line.startswith(QUICK)
                marks = [pytest.mark.slow] if line.startswith(SLOW) or runs_default_model else []
                cases.append(pytest.param(name, "bash", command, id=f"{name}:{start + offset}:{line[:60]}",
                                          marks=marks))
    return cases


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, user_cache):
    """One directory per document, its commands run in order there (`fuse` uses what `finetune`
    wrote); ``workdir(source) -> (cwd, env)``."""
    root = tmp_path_factory.mktemp("docs")
    env = user_env(root, user_cache)
    from mlxsmall.hub import find_pip_gguf
    from mlxsmall.registry import SMOLLM2_GGUF, SMOLLM2_PACKAGE

    def for_source(source: str):
        cwd = root / source.replace("/", "_")
        if not cwd.exists():
            samples = cwd / "mlxsmall" / "train" / "samples"
            samples.mkdir(parents=True)
            for file in (ROOT / "mlxsmall" / "train" / "samples").glob("*.jsonl"):
                (samples / file.name).write_bytes(file.read_bytes())
            # `mlxsmall convert model.gguf` stands for any llama-family GGUF: give it the default's.
            (cwd / "model.gguf").symlink_to(find_pip_gguf(SMOLLM2_PACKAGE, SMOLLM2_GGUF))
        return cwd, env

    return for_source


@pytest.mark.parametrize("source, language, code", doc_cases())
def test_doc_block_runs(source, language, code, workdir):
    cwd, env = workdir(source)
    if source in SKIP_FILES:
        pytest.skip(SKIP_FILES[source])
    if language == "python":
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env=env, cwd=cwd.parent, timeout=600)
        assert result.returncode == 0, result.stderr
        return
    if language == "script":
        run_script(code, env, cwd)
        return
    line = shlex.join(code)
    for prefix, reason in SKIP.items():
        if line.startswith(prefix):
            pytest.skip(reason)
    if code[0] != "mlxsmall":
        pytest.fail(f"{line}: not an mlxsmall command; run it here or add it to SKIP with the reason")
    result = mlxsmall(*code[1:], env=env, cwd=cwd, stdin="", timeout=1800)  # bench: >10 min on a busy 2-core box
    if ONLINE_OR_PLACEHOLDER.search(line):
        if result.returncode != 0:
            assert_one_line_error(result)
        return
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    if "haiku" in line:
        verses = [verse for verse in result.stdout.splitlines() if verse.strip()]
        assert len(verses) == 3, result.stdout  # a haiku, not "."


def run_script(code: str, env: dict, cwd: Path) -> None:
    """The block as one `bash -e` script with this environment's `mlxsmall` and `python` first on
    PATH; whatever it leaves running (a server) is stopped with its process group."""
    import os
    import signal

    env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    process = subprocess.Popen(["bash", "-e", "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=900)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if process.poll() is None:
            process.communicate()
    assert process.returncode == 0, (out[-2000:], err[-2000:])
    assert "Traceback" not in err, err[-2000:]
