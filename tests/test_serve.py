"""`mlxsmall serve` driven by the official `openai` client, against a tiny model in a subprocess."""

import json
import subprocess
import sys
import threading
from pathlib import Path
import time
import urllib.error
import urllib.request

import pytest
sys.path.insert(0, str(Path(__file__).parent))  # tests/ helper modules (pytest runs in importlib mode)
from loopback import urlopen
from serve_helpers import MODEL_ID, TIMEOUT, clean_env, save_tiny_mobillama, serving

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_tokenizer_dir):
    path = save_tiny_mobillama(tmp_path_factory.mktemp("serve") / "mobillama-tiny", tiny_tokenizer_dir)
    with serving(path, tmp_path_factory.mktemp("home")) as (process, url, lines):
        yield {"url": url, "path": path, "process": process, "log": lines}


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def chat(client, text="Hello!", **kwargs):
    return client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": text}],
                                          **kwargs)


def test_models_lists_the_served_model(client):
    ids = [model.id for model in client.models.list().data]
    assert MODEL_ID in ids


@pytest.mark.slow  # runs `mlxsmall generate` in a second process
def test_completion_matches_the_cli(client, server, tmp_path):
    reply = client.completions.create(model=MODEL_ID, prompt="The capital of France is", max_tokens=8,
                                      temperature=0)
    cli = subprocess.run(
        [sys.executable, "-m", "mlxsmall", "generate", str(server["path"]), "-p", "The capital of France is",
         "-m", "8", "--quiet", "--raw"], capture_output=True, text=True, timeout=300, env=clean_env(tmp_path),
    )
    assert cli.returncode == 0, cli.stderr
    assert reply.choices[0].text == cli.stdout[:-1]  # the CLI ends with a newline
    assert reply.object == "text_completion"
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_equals_non_streaming(client):
    whole = chat(client, max_tokens=12, temperature=0)
    answer = whole.choices[0].message.content or ""
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert 1 <= whole.usage.completion_tokens <= 12

    chunks = list(chat(client, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sampling_with_a_seed_repeats(client):
    first = chat(client, max_tokens=10, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    again = chat(client, max_tokens=10, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
    assert first == again


def test_stop_string_cuts_the_answer(client):
    text = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=16, temperature=0).choices[0].text
    assert len(text) >= 6, text
    stop = text[3:5]
    reply = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=16, temperature=0, stop=[stop])
    assert reply.choices[0].text == text[: text.find(stop)]
    assert reply.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=16, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text[: text.find(stop)]


def test_two_concurrent_clients_get_their_own_answers(server):
    prompts = ["Hello! How are you?", "SELECT name FROM users"]
    clients = [openai.OpenAI(base_url=server["url"] + "/v1", api_key="x", timeout=TIMEOUT, max_retries=0)
               for _ in prompts]
    alone = [chat(c, p, max_tokens=24, temperature=0).choices[0].message.content for c, p in zip(clients, prompts)]
    together = [None, None]

    def ask(i):
        stream = chat(clients[i], prompts[i], max_tokens=24, temperature=0, stream=True)
        together[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert together == alone  # queued, never interleaved into one cache


def read_events(url, until, timeout=TIMEOUT, subscribed=None):
    """Events from the server's feed until ``until(event)`` is true (or ``timeout`` seconds)."""
    seen = []
    deadline = time.monotonic() + timeout
    with urlopen(url + "/v1/mlxsmall/events", timeout=timeout) as feed:
        for raw in feed:
            if subscribed is not None:
                subscribed.set()  # the server sends a "hello" as soon as the feed is open
            if time.monotonic() > deadline:
                return seen
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            seen.append(event)
            if until(event):
                return seen
    return seen


def test_disconnect_mid_stream_frees_the_worker(client, server):
    done, subscribed = [], threading.Event()
    watcher = threading.Thread(target=lambda: done.extend(read_events(
        server["url"], lambda e: e["kind"] == "serve" and e["fields"].get("phase") == "done",
        subscribed=subscribed)))
    watcher.start()
    assert subscribed.wait(TIMEOUT)
    stream = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=480, temperature=0,
                                       stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()  # drops the connection
    watcher.join(timeout=TIMEOUT)
    finished = [e for e in done if e["kind"] == "serve" and e["fields"].get("phase") == "done"]
    assert finished and finished[-1]["fields"]["cancelled"], done[-3:]
    assert finished[-1]["fields"]["generation_tokens"] < 480
    # and the next request is served
    assert chat(client, max_tokens=4).choices[0].finish_reason in ("stop", "length")


def post_raw(url, body: bytes, headers=None):
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def assert_error_object(body, param=None):
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    if param:
        assert error["param"] == param


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


def test_negative_max_tokens_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, max_tokens=-5)
    assert caught.value.param == "max_tokens"


def test_prompt_longer_than_the_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, "Paris is a city. " * 400, max_tokens=4)
    assert caught.value.code == "context_length_exceeded"


def test_malformed_requests_get_error_objects(server):
    status, body = post_raw(server["url"], b"{not json")
    assert status == 400
    assert_error_object(body)
    status, body = post_raw(server["url"], b'{"model": "tiny", "messages": "hi"}')
    assert status == 400
    assert_error_object(body, "messages")
    status, body = post_raw(server["url"], b'[1, 2]')
    assert status == 400
    assert_error_object(body)
    # the server is still fine afterwards
    status, body = post_raw(server["url"], json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode())
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.slow  # starts a second server
def test_api_key_is_checked(make_tiny_model, tmp_path):
    with serving(make_tiny_model("mobilellm"), tmp_path, "--api-key", "sesame") as (_, url, _):
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="guess", timeout=TIMEOUT, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=url + "/v1", api_key="sesame", timeout=TIMEOUT, max_retries=0)
        assert chat(right, max_tokens=3).choices[0].message.role == "assistant"
