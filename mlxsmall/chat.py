"""Multi-turn chat on top of the one generation loop.

Keeps the conversation, builds the prompt with the model's chat template (the
tokenizer's own: ChatML for SmolLM2, FastChat one_shot written in by the
conversion for MobiLlama-Chat; a plain transcript for base models), keeps the
KV cache across turns when the new prompt extends the old one, and drops the
oldest turns when the context would overflow.
"""

from dataclasses import dataclass, field
from typing import List, Optional

from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

from .generation import stream_generate

def plain_transcript(messages, add_generation_prompt=True) -> str:
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines)


@dataclass
class ChatSession:
    model: object
    tokenizer: object
    context_length: int = 2048
    max_tokens: int = 512
    system: Optional[str] = None
    template: Optional[str] = None  # None: the tokenizer's if it has one; "plain": a transcript
    stop: List[str] = field(default_factory=list)  # e.g. "###" for FastChat-style models
    messages: List[dict] = field(default_factory=list)
    notices: List[str] = field(default_factory=list)

    def __post_init__(self):
        if self.max_tokens >= self.context_length:
            # Leave room for the conversation: answers get at most half the context.
            self.max_tokens = self.context_length // 2
        self.reset()

    def reset(self):
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.cache = make_prompt_cache(self.model)
        self.cached_tokens: List[int] = []

    @property
    def stop_strings(self):
        return self.stop + (["\nUser:"] if self.template_name == "plain" else [])

    @property
    def template_name(self) -> str:
        if self.template:
            return self.template
        return "tokenizer" if getattr(self.tokenizer, "chat_template", None) else "plain"

    def render(self, messages) -> List[int]:
        name = self.template_name
        if name == "tokenizer":
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        return self.tokenizer.encode(plain_transcript(messages))

    def fit_history(self) -> List[int]:
        """Prompt tokens for the conversation, dropping the oldest turns if needed."""
        budget = self.context_length - self.max_tokens
        tokens = self.render(self.messages)
        first_turn = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        dropped = 0
        while len(tokens) > budget and len(self.messages) - first_turn > 1:
            del self.messages[first_turn]
            tokens = self.render(self.messages)
            dropped += 1
        if dropped:  # one notice per turn, however many messages went
            self.notices.append(f"context full: dropped the oldest turn ({dropped} message{'s' * (dropped > 1)})")
        if len(tokens) > budget:
            tokens = tokens[-budget:]
            self.notices.append(f"message too long: kept its last {budget} tokens")
        return tokens

    def send(self, text: str, **sampling):
        """Add a user turn and stream the answer (GenerationStep objects).

        If the caller stops iterating early (Ctrl-C), the partial answer is kept
        in the history and the KV cache is rebuilt on the next turn.
        """
        self.notices.clear()
        self.messages.append({"role": "user", "content": text})
        tokens = self.fit_history()
        new_tokens = self.reuse_cache(tokens)
        answer, generated = [], []
        completed = False
        try:
            for step in stream_generate(
                self.model, self.tokenizer, new_tokens, max_tokens=self.max_tokens,
                prompt_cache=self.cache, stop=self.stop_strings, **sampling,
            ):
                answer.append(step.text)
                generated.append(step.token)
                yield step
            completed = True
        finally:
            self.messages.append({"role": "assistant", "content": "".join(answer).strip()})
            if completed:
                offset = self.cache[0].offset
                self.cached_tokens = (tokens + generated)[:offset]
            else:
                self.cache = make_prompt_cache(self.model)
                self.cached_tokens = []

    def reuse_cache(self, tokens: List[int]) -> List[int]:
        """Trim the cache to the longest prefix it shares with ``tokens``; return the rest."""
        common = 0
        for a, b in zip(self.cached_tokens, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # always feed at least one token
        cached = self.cache[0].offset if self.cache else 0
        if cached > common:
            if can_trim_prompt_cache(self.cache):
                trim_prompt_cache(self.cache, cached - common)
            else:
                self.cache = make_prompt_cache(self.model)
                common = 0
        self.cached_tokens = tokens[:common]
        return tokens[common:]
