"""Which protocol scores the generation tasks: ours (the default) or MobileAIBench's.

``default``: our prompts (few-shot capable), answer extraction (``eval/answers.py``),
test-suite SQL execution accuracy, SQuAD EM/F1, ROUGE-1/2/L with stemming.
``mobileaibench``: their prompts, caps, post-processing and metrics
(``eval/mobileaibench.py``) for the tasks they have (sql, hotpotqa, dolly,
cnn_dailymail, xsum); every other task keeps the default protocol.
``both``: each of those tasks twice, the MobileAIBench run named ``<task>@mobileaibench``.
"""

from typing import Iterator, Sequence

from mlxsmall.eval import mobileaibench

PROTOCOLS = ("default", mobileaibench.NAME, "both")


def with_protocols(tasks: Sequence, protocol: str) -> Iterator:
    for task in tasks:
        theirs = mobileaibench.task_for(task) if protocol != "default" else None
        if theirs is None:
            yield task
        elif protocol == "both":
            yield task
            yield mobileaibench.task_for(task, name=f"{task.name}@{mobileaibench.NAME}")
        else:
            yield theirs
