"""Run the `mlxsmall` program as a new user would (shared by test_cli_user.py and test_docs.py)."""

import os
import subprocess
import sys
from pathlib import Path

PROGRAM = Path(sys.executable).with_name("mlxsmall")


def mlxsmall(*args, env, stdin=None, timeout=600, cwd=None):
    command = [str(PROGRAM)] if PROGRAM.exists() else [sys.executable, "-m", "mlxsmall"]
    return subprocess.run(command + [str(a) for a in args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=cwd)


def user_env(root: Path, cache: Path, **extra) -> dict:
    """A new user's environment: empty HOME under ``root``, the XDG cache ``cache``, offline,
    no project or Hugging Face settings inherited."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLXSMALL_", "HF_", "HUGGINGFACE_", "XDG_", "TRANSFORMERS_"))}
    env.update(HOME=str(root / "home"), XDG_CACHE_HOME=str(cache), HF_HOME=str(root / "hf"),
               HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    (root / "home").mkdir(parents=True, exist_ok=True)
    env.update(extra)
    return env


def clean_env(tmp_path: Path, **extra) -> dict:
    """``user_env`` with everything (home, cache, Hugging Face) under one test's ``tmp_path``."""
    return user_env(tmp_path, tmp_path / "cache", **extra)


def assert_one_line_error(result, *fragments) -> str:
    """Exit 2 and exactly one `error:` line on stderr, no traceback; returns that line."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
