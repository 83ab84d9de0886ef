"""Evaluation: task quality (``mlxsmall eval``) and efficiency (``mlxsmall bench``).

    from mlxsmall.eval.runner import EvalOptions, evaluate
    from mlxsmall.eval.tasks import resolve_tasks
    results = evaluate(model, tokenizer, resolve_tasks(["commonsense"]), EvalOptions(limit=20))

Modules: ``metrics`` (EM/F1, ROUGE, SQL exact match, log-likelihood scoring,
perplexity), ``sql_suite`` (test-suite SQL execution accuracy), ``answers`` (the
answer inside a reply), ``mobileaibench`` and ``protocols`` (``--protocol``),
``tasks`` (the one table of tasks, ``TASKS``, and the sample sets in ``data/``),
``runner`` (one evaluator per task kind, ``EVALUATORS``), ``vqa`` (visual question
answering for vision-language models), ``shapes`` (the synthetic images),
``variants`` (fp16/q8/q4/... of one model in memory), ``report`` (JSON, Markdown, plots).

Adding a task: a row in ``tasks.TASKS``; a task of a new kind also needs its evaluator
in ``runner.EVALUATORS``: ``fn(model, tokenizer, task, docs, options, report) ->
(metrics dict, examples list, n)``.
"""
