"""A user's mistake is one line, exit code 2, before any model loads or heavy library is imported.

Each bad invocation runs as the user runs it (the program in a subprocess, a clean HOME and cache,
offline) under ``python -X importtime``: instead of timing it, the test checks that none of the
libraries that take seconds to import (mlx-lm, transformers, torch, scipy, datasets) was imported
before the error, a deterministic stand-in for "in well under a second". The invocations run
concurrently once per session; each case then checks its own result.
"""

import importlib.util
import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from user_cli import user_env  # noqa: E402

HEAVY = ("mlx_lm", "transformers", "torch", "scipy", "datasets")

# (argv with {d} = a folder of prepared files, what the error line must name)
# {port}: a port in use on 127.0.0.1.
# {d}/model: a directory with a config.json (never loaded: every check comes first);
# {d}/taken: an existing output; {d}/adapters: an adapter directory; {d}/vlm: a VLM directory.
CASES = {
    # finetune: the records are read and checked before the model loads
    "finetune data not json": (["finetune", "--data", "{d}/hostname", "-o", "{d}/out"], "hostname:1: not valid JSON"),
    "finetune data unknown keys": (["finetune", "--data", "{d}/keys.jsonl", "-o", "{d}/out"], "expected 'text'"),
    "finetune data two formats": (["finetune", "--data", "{d}/mixed.jsonl", "-o", "{d}/out"], "one format per file"),
    "finetune data dir without train": (["finetune", "--data", "{d}", "-o", "{d}/out"], "no train.jsonl"),
    "finetune data dir bad valid": (["finetune", "--data", "{d}/split", "-o", "{d}/out"], "valid.jsonl:2: not valid JSON"),
    "finetune data fewer than a batch": (["finetune", "--data", "{d}/good.jsonl", "--batch-size", "16"],
                                         "9 training examples, fewer than --batch-size 16"),
    "finetune data missing": (["finetune", "--data", "{d}/nope.jsonl", "-o", "{d}/out"], "nope.jsonl: no such file"),
    "finetune model missing": (["finetune", "{d}/nope", "--data", "{d}/good.jsonl", "-o", "{d}/out"], "nope: no such file"),
    "finetune model typo": (["finetune", "smolm2", "--data", "{d}/good.jsonl", "-o", "{d}/out"], "did you mean smollm2"),
    "finetune model dir without config": (["finetune", "{d}/split", "--data", "{d}/good.jsonl", "-o", "{d}/out"],
                                          "no config.json"),
    "finetune full on a 4-bit default": (["finetune", "--data", "{d}/good.jsonl", "--method", "full"],
                                         "the default model: a full finetune needs a float model"),
    "finetune full on a 4-bit dir": (["finetune", "{d}/q4", "--data", "{d}/good.jsonl", "--method", "full"],
                                     "q4: a full finetune needs a float model"),
    "finetune output is a file": (["finetune", "--data", "{d}/good.jsonl", "-o", "{d}/good.jsonl"], "is a file"),
    "finetune steps 0": (["finetune", "--data", "{d}/good.jsonl", "--steps", "0"], "--steps: must be at least 1, not 0"),
    "finetune batch size -1": (["finetune", "--data", "{d}/good.jsonl", "--batch-size", "-1"], "--batch-size: must be"),
    "finetune rank 0": (["finetune", "--data", "{d}/good.jsonl", "--rank", "0"], "--rank: must be at least 1"),
    "finetune lr 0": (["finetune", "--data", "{d}/good.jsonl", "--lr", "0"], "--lr: must be greater than 0"),
    "finetune dropout 1": (["finetune", "--data", "{d}/good.jsonl", "--dropout", "1"], "--dropout: must be in [0, 1)"),
    "finetune warmup -1": (["finetune", "--data", "{d}/good.jsonl", "--warmup", "-1"], "--warmup: must be at least 0"),
    "finetune max length 0": (["finetune", "--data", "{d}/good.jsonl", "--max-length", "0"], "--max-length"),
    # eval: tasks, variants, data and models before mlx-lm is imported
    "eval unknown task": (["eval", "--tasks", "nope"], "unknown task 'nope'"),
    "eval task typo": (["eval", "--tasks", "arc_esay"], "unknown task 'arc_esay'; did you mean arc_easy"),
    "eval unknown precision": (["eval", "--compare", "q7"], "unknown precision 'q7'"),
    "eval compare missing model": (["eval", "--compare", "{d}/nope@q4"], "nope: no such file"),
    "eval data missing": (["eval", "--data", "{d}/nope"], "nope: no such file"),
    "eval data not json": (["eval", "--tasks", "arc_easy", "--data", "{d}/hostname"], "hostname"),
    "eval model missing": (["eval", "{d}/nope"], "nope: no such file"),
    "eval limit 0": (["eval", "--limit", "0"], "--limit must be at least 1"),
    "eval text file missing": (["eval", "--text-file", "{d}/nope.txt"], "nope.txt: no such file"),
    "eval output is a directory": (["eval", "-o", "{d}/taken"], "-o: {d}/taken: is a directory"),
    "eval plot under a file": (["eval", "--plot", "{d}/hostname/q.png"], "{d}/hostname is a file"),
    # serve and dashboard share the --port type
    "serve port too big": (["serve", "--port", "99999"], "--port: a port is 0-65535, not 99999"),
    "serve port negative": (["serve", "--port", "-1"], "--port: a port is 0-65535"),
    "serve port in use": (["serve", "--host", "127.0.0.1", "--port", "{port}"], "cannot listen on 127.0.0.1:{port}"),
    "dashboard serve port in use": (["dashboard", "--serve", "--host", "127.0.0.1", "--port", "{port}"],
                                    "cannot listen on 127.0.0.1:{port}"),
    "serve model missing": (["serve", "{d}/nope"], "nope: no such file"),
    "serve max tokens 0": (["serve", "-m", "0"], "--max-tokens: must be at least 1"),
    "dashboard port too big": (["dashboard", "--port", "70000"], "--port: a port is 0-65535"),
    "dashboard model missing": (["dashboard", "{d}/nope"], "nope: no such file"),
    "dashboard bench prompts": (["dashboard", "--bench-prompts", "x"], "--bench-prompts"),
    "dashboard bench repeats 0": (["dashboard", "--bench-repeats", "0"], "--bench-repeats: must be at least 1"),
    "dashboard export dir missing": (["dashboard", "--export-dir", "{d}/nope"], "--export-dir"),
    "dashboard attach not a url": (["dashboard", "--attach", "localhost:8080"], "--attach: localhost:8080"),
    "dashboard attach and model": (["dashboard", "{d}/model", "--attach", "http://127.0.0.1:9"],
                                   "give a MODEL or --attach"),
    # the model commands
    "generate model missing": (["generate", "{d}/nope", "-p", "hi"], "nope: no such file"),
    "generate image missing": (["generate", "-p", "hi", "--image", "{d}/nope.png"], "--image: {d}/nope.png: no such image file"),
    "generate temperature -1": (["generate", "-p", "hi", "--temp", "-1"], "--temp: must be at least 0, not -1"),
    "generate top p 0": (["generate", "-p", "hi", "--top-p", "0"], "--top-p: must be in (0, 1], not 0"),
    "generate top k -1": (["generate", "-p", "hi", "--top-k", "-1"], "--top-k: must be at least 0"),
    "chat repetition penalty 0": (["chat", "--repetition-penalty", "0"], "must be greater than 0"),
    "serve top p 2": (["serve", "--top-p", "2"], "--top-p: must be in (0, 1]"),
    "eval hub without datasets": (["eval", "--tasks", "arc_easy", "--data", "hub"], "datasets"),
    "pretrain distill alpha 2": (["pretrain", "{d}/good.jsonl", "-o", "{d}/out", "--distill-alpha", "2"],
                                 "--distill-alpha: must be in [0, 1]"),
    "chat model missing": (["chat", "{d}/nope"], "nope: no such file"),
    "chat context 0": (["chat", "--context", "0"], "--context: must be at least 1"),
    "chat image missing": (["chat", "{d}/vlm", "--image", "{d}/nope.png"], "--image: {d}/nope.png: no such image file"),
    "info model missing": (["info", "{d}/nope"], "nope: no such file"),
    "info alias typo": (["info", "mobilama"], "did you mean mobillama"),
    "quantize model missing": (["quantize", "{d}/nope", "-o", "{d}/out"], "nope: no such file"),
    "quantize output exists": (["quantize", "{d}/model", "-o", "{d}/taken"], "taken: already exists"),
    "quantize bits 7": (["quantize", "{d}/model", "-o", "{d}/out", "--bits", "7"], "--bits: invalid choice: 7"),
    "quantize group size 0": (["quantize", "{d}/model", "-o", "{d}/out", "--group-size", "0"], "--group-size"),
    "convert source missing": (["convert", "{d}/nope", "-o", "{d}/out"], "nope: no such file"),
    "convert source not a checkpoint": (["convert", "{d}/split", "-o", "{d}/out"], "no config.json"),
    "convert source a plain file": (["convert", "{d}/hostname", "-o", "{d}/out"], "a .gguf file"),
    "convert output exists": (["convert", "{d}/model", "-o", "{d}/taken"], "taken: already exists"),
    "convert bits 7": (["convert", "{d}/model", "-o", "{d}/out", "-q", "--bits", "7"], "--bits: invalid choice: 7"),
    "convert group size 0": (["convert", "{d}/model", "-o", "{d}/out", "--group-size", "0"], "--group-size"),
    "convert tokenizer missing": (["convert", "{d}/model", "-o", "{d}/out", "--tokenizer", "{d}/nope"],
                                  "--tokenizer: {d}/nope"),
    "export model missing": (["export", "{d}/nope", "-o", "{d}/out"], "nope: no such file"),
    "export output exists": (["export", "{d}/model", "-o", "{d}/taken"], "taken: already exists"),
    "fuse adapters missing": (["fuse", "--adapters", "{d}/nope", "-o", "{d}/out"], "adapter_config.json: not found"),
    "fuse output exists": (["fuse", "--adapters", "{d}/adapters", "-o", "{d}/taken"], "taken: already exists"),
    "fuse model missing": (["fuse", "{d}/nope", "--adapters", "{d}/adapters", "-o", "{d}/out"], "nope: no such file"),
    "fuse bits 7": (["fuse", "--adapters", "{d}/adapters", "-o", "{d}/out", "--bits", "7"], "invalid choice: 7"),
    "bench model missing": (["bench", "{d}/nope"], "nope: no such file"),
    "bench unknown precision": (["bench", "--precisions", "q7"], "unknown precision 'q7'"),
    "bench prompt 0": (["bench", "-p", "0"], "--prompt-tokens: must be at least 1"),
    "bench output under a file": (["bench", "-o", "{d}/hostname/b.json"], "{d}/hostname is a file"),
    "bench warmup -1": (["bench", "--warmup", "-1"], "--warmup: must be at least 0"),
    "pretrain corpus missing": (["pretrain", "{d}/nope", "-o", "{d}/out"], "nope: no such file"),
    "pretrain unknown config": (["pretrain", "{d}/good.jsonl", "-o", "{d}/out", "--config", "huge"],
                                "unknown --config 'huge'"),
    "pretrain steps -1": (["pretrain", "{d}/good.jsonl", "-o", "{d}/out", "--steps", "-1"], "--steps: must be"),
    "pretrain tokenizer missing": (["pretrain", "{d}/good.jsonl", "-o", "{d}/out", "--tokenizer", "{d}/nope"],
                                   "--tokenizer: {d}/nope"),
    "pretrain teacher missing": (["pretrain", "{d}/good.jsonl", "-o", "{d}/out", "--teacher", "{d}/nope"],
                                 "nope: no such file"),
    "pretrain layer sharing mobillama": (["pretrain", "{d}/good.jsonl", "-o", "{d}/out", "--layer-sharing"],
                                         "MobileLLM option"),
    "pretrain output is a file": (["pretrain", "{d}/good.jsonl", "-o", "{d}/hostname"], "is a file"),
    "vlm train model missing": (["vlm", "train", "{d}/nope", "--data", "{d}/nope.json", "-o", "{d}/out"],
                                "nope: no such file"),
    "vlm train not a vlm": (["vlm", "train", "{d}/model", "--data", "{d}/good.jsonl", "-o", "{d}/out"],
                            "not a vision-language model"),
    "vlm train data missing": (["vlm", "train", "{d}/vlm", "--data", "{d}/nope.json", "-o", "{d}/out"],
                               "--data: {d}/nope.json: no such file"),
    "vlm train output exists": (["vlm", "train", "{d}/vlm", "--data", "{d}/good.jsonl", "-o", "{d}/taken"],
                                "taken: already exists"),
    "vlm train steps 0": (["vlm", "train", "{d}/vlm", "--data", "x", "-o", "y", "--steps", "0"], "--steps: must be"),
    "vlm build vision missing": (["vlm", "build", "--vision", "{d}/nope", "--lm", "smollm2", "-o", "{d}/out"],
                                 "nope: no such file"),
    "vlm build lm typo": (["vlm", "build", "--vision", "{d}/model", "--lm", "smolm2", "-o", "{d}/out"],
                          "did you mean smollm2"),
    "vlm build output exists": (["vlm", "build", "--vision", "{d}/model", "--lm", "{d}/model", "-o", "{d}/taken"],
                                "taken: already exists"),
    "vlm convert source missing": (["vlm", "convert", "{d}/nope", "-o", "{d}/out"], "nope: no such file"),
    "vlm convert output exists": (["vlm", "convert", "{d}/model", "-o", "{d}/taken"], "taken: already exists"),
}

if importlib.util.find_spec("datasets") is not None:  # then --data hub is a valid choice here
    del CASES["eval hub without datasets"]


def prepare(folder: Path) -> None:
    (folder / "hostname").write_text("my-laptop\n")  # exists, not JSONL
    (folder / "good.jsonl").write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(10)))
    (folder / "keys.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    (folder / "mixed.jsonl").write_text('{"text": "a"}\n{"prompt": "b", "completion": "c"}\n')
    split = folder / "split"
    split.mkdir()
    (split / "train.jsonl").write_text('{"text": "a"}\n')
    (split / "valid.jsonl").write_text('{"text": "a"}\n{broken\n')
    for name, model_type in (("model", "llama"), ("vlm", "llava")):
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps({"model_type": model_type}))
    (folder / "q4").mkdir()
    (folder / "q4" / "config.json").write_text(json.dumps({"model_type": "llama",
                                                          "quantization": {"bits": 4, "group_size": 32}}))
    (folder / "taken").mkdir()
    (folder / "adapters").mkdir()
    (folder / "adapters" / "adapter_config.json").write_text("{}")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case's (returncode, stderr lines without the importtime report, imported modules)."""
    root = tmp_path_factory.mktemp("cli-arguments")
    folder = root / "files"
    folder.mkdir()
    prepare(folder)
    env = user_env(root, root / "cache")

    def run(argv):
        argv = [arg.format(d=folder, port=port) for arg in argv]
        try:
            done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mlxsmall", *argv], capture_output=True,
                                  text=True, env=env, cwd=root, stdin=subprocess.DEVNULL, timeout=60)
        except subprocess.TimeoutExpired:  # e.g. a dashboard that started instead of refusing its --port
            return None, ["still running after 60 s"], set()
        lines, imported = [], set()
        for line in done.stderr.splitlines():
            if line.startswith("import time:"):
                imported.add(line.split("|")[-1].strip().split(".")[0])
            elif line.strip():
                lines.append(line)
        return done.returncode, lines, imported

    with socket.socket() as taken, ThreadPoolExecutor(max_workers=4) as pool:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outcomes = dict(zip(CASES, pool.map(run, (argv for argv, _ in CASES.values()))))
    return folder, port, outcomes


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line_before_any_heavy_import(case, results):
    folder, port, outcomes = results
    returncode, lines, imported = outcomes[case]
    fragment = CASES[case][1].format(d=folder, port=port)
    assert returncode == 2, (returncode, lines)
    assert lines, "no error message"
    error = lines[-1]
    if lines[0].startswith("usage: mlxsmall"):  # argparse: its usage, then the error line
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), lines
        assert error.startswith("mlxsmall") and ": error: " in error, lines
    else:
        assert len(lines) == 1, lines
        assert error.startswith("mlxsmall: error: "), lines
    assert "Traceback" not in error
    assert fragment in error, error
    heavy = sorted(module for module in HEAVY if module in imported)
    assert not heavy, f"imported before the error: {heavy}"
