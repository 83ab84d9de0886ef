"""The one generation loop, the chat session and the generate/chat commands."""

import subprocess
import sys

import mlx.core as mx
import pytest

from mlxsmall import events, generate, load, stream_generate
from mlxsmall.chat import ChatSession
from mlxsmall.generation import StopStrings


def greedy_reference(model, ids, n):
    """Greedy decoding by full forward passes, no cache."""
    ids = list(ids)
    out = []
    for _ in range(n):
        logits = model(mx.array([ids]))[0, -1]
        token = int(mx.argmax(logits).item())
        ids.append(token)
        out.append(token)
    return out


@pytest.mark.parametrize("arch", ["mobilellm", "mobilellm-ls", "mobillama"])
def test_stream_generate_greedy_equals_full_forward_decoding(make_tiny_model, arch):
    model, tokenizer = load(make_tiny_model(arch))
    prompt = tokenizer.encode("The capital of France is")
    steps = list(stream_generate(model, tokenizer, prompt, max_tokens=8))
    got = [s.token for s in steps]
    expected = greedy_reference(model, prompt, len(got))
    assert got == expected
    last = steps[-1]
    assert last.prompt_tokens == len(prompt)
    assert last.generation_tps > 0 and last.prompt_tps > 0
    assert 0 < last.time_to_first_token < 60
    assert last.finish_reason in ("length", "stop")


def test_api_in_the_style_of_mlx_lm(make_tiny_model):
    model, tokenizer = load(make_tiny_model("mobillama"))
    logits = model(mx.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, 320)
    text = generate(model, tokenizer, "Hello", max_tokens=5)
    assert isinstance(text, str)


def test_events_are_published(make_tiny_model):
    model, tokenizer = load(make_tiny_model("mobilellm"))
    seen = []
    unsubscribe = events.subscribe(seen.append)
    try:
        generate(model, tokenizer, "Hello", max_tokens=4)
    finally:
        unsubscribe()
    phases = [e["phase"] for e in seen if e.kind == "generation"]
    assert phases[0] == "start" and phases[-1] == "done"
    assert seen[-1]["generation_tokens"] >= 1


def test_stop_strings_never_leak_a_partial_stop():
    stops = StopStrings(["### Human:"])
    out = []
    for piece in ["Sure", " thing.", "\n###", " Hum", "an: hi"]:
        text, stopped = stops.feed(piece)
        out.append(text)
        if stopped:
            break
    assert "".join(out) == "Sure thing.\n" and stopped


def test_seeded_sampling_is_reproducible(make_tiny_model):
    model, tokenizer = load(make_tiny_model("mobilellm"))
    a = generate(model, tokenizer, "Hi", max_tokens=12, temperature=1.0, seed=3)
    b = generate(model, tokenizer, "Hi", max_tokens=12, temperature=1.0, seed=3)
    assert a == b


def test_chat_reuses_the_cache_and_matches_a_fresh_run(make_tiny_model):
    model, tokenizer = load(make_tiny_model("mobilellm-ls"))
    session = ChatSession(model, tokenizer, context_length=512, max_tokens=6)
    list(session.send("Hello there"))
    second = [s.token for s in session.send("And again")]
    assert session.cached_tokens  # the first turn's tokens stayed in the cache

    fresh = ChatSession(model, tokenizer, context_length=512, max_tokens=6)
    fresh.messages = session.messages[:3]
    tokens = fresh.render(fresh.messages)
    assert [s.token for s in stream_generate(model, tokenizer, tokens, max_tokens=6)] == second


def test_chat_context_overflow_drops_oldest_turns(make_tiny_model):
    model, tokenizer = load(make_tiny_model("mobillama"))
    session = ChatSession(model, tokenizer, context_length=96, max_tokens=8, system="Be brief.")
    for i in range(6):
        list(session.send(f"Question number {i}: tell me about small language models."))
    assert any("dropped the oldest turn" in n for n in session.notices) or len(session.messages) < 13
    assert len(session.notices) == len(set(session.notices)) <= 1  # one notice per turn, not one per message
    assert session.messages[0]["role"] == "system"
    list(session.send("word " * 200))  # one message longer than the context
    assert any("too long" in n for n in session.notices)


def test_chat_answer_budget_never_exceeds_the_context(make_tiny_model):
    model, tokenizer = load(make_tiny_model("mobilellm"))
    session = ChatSession(model, tokenizer, context_length=64, max_tokens=5000)
    assert session.max_tokens == 32
    assert len(list(session.send("Hello"))) >= 1


def test_chat_interrupted_answer_keeps_the_session_usable(make_tiny_model):
    model, tokenizer = load(make_tiny_model("mobilellm"))
    session = ChatSession(model, tokenizer, context_length=256, max_tokens=8)
    stream = session.send("Hello")
    next(stream)
    stream.close()  # what Ctrl-C does to the loop
    assert session.cached_tokens == []
    assert len(list(session.send("Again"))) >= 1


def test_chat_honours_the_models_stop_strings(make_tiny_model):
    import json

    from mlxsmall.loading import stop_strings

    path = make_tiny_model("mobilellm")
    (path / "generation_config.json").write_text(json.dumps({"stop_strings": ["###"]}))
    assert stop_strings(path) == ["###"]
    model, tokenizer = load(path)
    session = ChatSession(model, tokenizer, stop=stop_strings(path), template="plain")
    assert session.stop_strings == ["###", "\nUser:"]


def run_cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "mlxsmall", *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_generate_command_streams_and_reports(make_tiny_model):
    path = make_tiny_model("mobillama")
    result = run_cli("generate", str(path), "-p", "Hello", "-m", "5")
    assert result.returncode == 0, result.stderr
    assert "generation: 5 tokens" in result.stderr and "TTFT" in result.stderr and "peak memory" in result.stderr
    quiet = run_cli("generate", str(path), "-p", "Hello", "-m", "5", "--quiet")
    assert quiet.stderr == "" and quiet.stdout.strip() == result.stdout.strip()


def test_chat_command_repl(make_tiny_model):
    path = make_tiny_model("llama")
    result = run_cli("chat", str(path), "-m", "4", stdin="Hello\n/reset\nHi again\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert "[conversation cleared]" in result.stdout


def test_help_teaches():
    result = run_cli("--help")
    assert result.returncode == 0 and "examples:" in result.stdout
    for command in ("generate", "chat", "info", "quantize"):
        sub = run_cli(command, "--help")
        assert sub.returncode == 0 and "examples:" in sub.stdout
