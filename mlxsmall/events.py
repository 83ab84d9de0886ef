"""One metrics feed: the generation loop, the trainer and the evaluator publish,
the dashboard (or anything else) subscribes.

Callbacks run on the publisher's thread; a UI must hand events over to its
own thread (Textual: ``call_from_thread`` / ``post_message``).
"""

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict


@dataclass(frozen=True)
class Event:
    kind: str  # "generation", "train", "eval", ...
    fields: Dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __getitem__(self, key):
        return self.fields[key]

    def get(self, key, default=None):
        return self.fields.get(key, default)


_subscribers = []
_lock = threading.Lock()


def subscribe(callback: Callable[[Event], None]) -> Callable[[], None]:
    """Call ``callback(event)`` for every published event; returns an unsubscribe function."""
    with _lock:
        _subscribers.append(callback)

    def unsubscribe():
        with _lock:
            if callback in _subscribers:
                _subscribers.remove(callback)

    return unsubscribe


@contextlib.contextmanager
def subscribed(callback: Callable[[Event], None]):
    """``subscribe`` for the length of a ``with`` block."""
    unsubscribe = subscribe(callback)
    try:
        yield
    finally:
        unsubscribe()


def publish(kind: str, **fields) -> Event:
    event = Event(kind, fields)
    with _lock:
        subscribers = list(_subscribers)
    for callback in subscribers:
        callback(event)
    return event
