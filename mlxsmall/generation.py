"""The one generation loop, shared by the CLI, the chat REPL and the dashboard.

It wraps ``mlx_lm.generate.stream_generate`` (sampling, KV cache, prefill)
and adds what mlx-lm leaves to the caller: stop strings held back until they
can be ruled out, time to first token, and a ``"generation"`` event per step
on the metrics feed (``mlxsmall.events``).
"""

import time
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Sequence, Union

import mlx.core as mx
from mlx_lm.generate import stream_generate as mlx_lm_stream_generate
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from . import events

PREFILL_STEP = 512  # prompt tokens per forward pass while pre-filling (one "prefill" event each)

@dataclass
class GenerationStep:
    text: str  # new text since the previous step (may be empty)
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    time_to_first_token: float  # seconds, prompt processing included
    peak_memory: float  # GB, MLX peak since the process started
    finish_reason: Optional[str] = None  # None, "length" or "stop"


def encode_prompt(tokenizer, prompt: Union[str, Sequence[int], mx.array]) -> List[int]:
    if isinstance(prompt, str):
        bos = getattr(tokenizer, "bos_token", None)
        add_special = bos is None or not prompt.startswith(bos)
        return tokenizer.encode(prompt, add_special_tokens=add_special)
    if isinstance(prompt, mx.array):
        return prompt.tolist()
    return list(prompt)


class StopStrings:
    """Finds stop strings in streamed text without ever printing part of one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""

    def feed(self, text: str):
        """Returns ``(text safe to emit, stopped)``."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            out = self.pending[: min(hits)]
            self.pending = ""
            return out, True
        cut = max(0, len(self.pending) - self.hold)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def stream_generate(
    model,
    tokenizer,
    prompt: Union[str, Sequence[int], mx.array],
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    repetition_penalty: Optional[float] = None,
    seed: Optional[int] = None,
    stop: Sequence[str] = (),
    prompt_cache=None,
    input_embeddings: Optional[mx.array] = None,
) -> Iterator[GenerationStep]:
    """Stream a completion of ``prompt`` step by step.

    ``prompt_cache`` (from ``mlx_lm.models.cache.make_prompt_cache(model)``)
    lets a caller keep the KV cache across calls (multi-turn chat): pass only
    the new tokens then. ``input_embeddings`` replaces the prompt's token
    embeddings (vision-language models splice image features there).
    """
    if seed is not None:
        mx.random.seed(seed)
    tokens = encode_prompt(tokenizer, prompt)
    sampler = make_sampler(temp=temperature, top_p=top_p, min_p=min_p, top_k=top_k)
    processors = make_logits_processors(repetition_penalty=repetition_penalty)
    stops = StopStrings(stop)
    extra = {} if input_embeddings is None else {"input_embeddings": input_embeddings}

    start = time.perf_counter()
    first_token_time = None
    events.publish("generation", phase="start", prompt_tokens=len(tokens))
    for response in mlx_lm_stream_generate(
        model,
        tokenizer,
        mx.array(tokens),
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=processors,
        prompt_cache=prompt_cache,
        prefill_step_size=PREFILL_STEP,
        prompt_progress_callback=lambda done, total: events.publish(
            "generation", phase="prefill", processed=done, total=total),
        **extra,
    ):
        if first_token_time is None:
            first_token_time = time.perf_counter() - start
        text, stopped = stops.feed(response.text)
        finish = "stop" if stopped else response.finish_reason
        if finish is not None and not stopped:
            text += stops.flush()
        step = GenerationStep(
            text=text,
            token=response.token,
            prompt_tokens=response.prompt_tokens,
            prompt_tps=response.prompt_tps,
            generation_tokens=response.generation_tokens,
            generation_tps=response.generation_tps,
            time_to_first_token=first_token_time,
            peak_memory=response.peak_memory,
            finish_reason=finish,
        )
        events.publish("generation", phase="done" if finish else "token", **asdict(step))
        yield step
        if finish:
            return


def generate(model, tokenizer, prompt, **kwargs) -> str:
    """The whole completion as a string (see ``stream_generate`` for options)."""
    return "".join(step.text for step in stream_generate(model, tokenizer, prompt, **kwargs))
