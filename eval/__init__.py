"""Evaluation: task quality (``mlxsmall eval``) and efficiency (``mlxsmall bench``).

    from mlxsmall.eval.runner import EvalOptions, evaluate
    from mlxsmall.eval.tasks import resolve_tasks
    results = evaluate(model, tokenizer, resolve_tasks(["commonsense"]), EvalOptions(limit=20))

Modules: ``metrics`` (EM/F1, ROUGE, SQL exact match, log-likelihood scoring,
perplexity), ``sql_suite`` (test-suite SQL execution accuracy), ``answers`` (the
answer inside a reply), ``mobileaibench`` and ``protocols`` (``--protocol``),
``tasks`` (the task registry and the sample sets in ``data/``),
``runner`` (one evaluator per task kind), ``variants`` (fp16/q8/q4/... of one
model in memory), ``bench`` (TTFT, tok/s, memory, energy), ``report`` (JSON,
Markdown, plots).

Adding a task of a new kind (the VQA hook): register the task with
``tasks.register_task(Task(name, description, sample_file, kind="vqa"))`` and its
evaluator with ``@runner.register_evaluator("vqa")``; ``fn(model, tokenizer, task,
docs, options, report) -> (metrics dict, examples list, n)``.
"""
