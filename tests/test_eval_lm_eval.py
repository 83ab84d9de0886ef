"""Multiple choice is scored exactly as lm-evaluation-harness scores it.

The templates below are copied from lm-evaluation-harness (EleutherAI, commit 4e7e0d47,
lm_eval/tasks/<task>/*.yaml and utils.py) and rendered here with jinja2, the engine lm-eval
uses; acc/acc_norm are lm-eval's ``ConfigurableTask.process_results`` for multiple_choice:
``pred = argmax(lls)``, ``pred_norm = argmax(lls / [len(choice) for choice in doc_to_choice])``.
"""

import ast
import re

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import numpy as np
import pytest

from mlxsmall.eval import metrics, runner
from mlxsmall.eval.runner import EvalOptions
from mlxsmall.eval.tasks import TASKS, ChoiceDoc, load_docs

jinja2 = pytest.importorskip("jinja2")

# task: (doc_to_text, doc_to_choice, doc_to_target) as the YAML files have them.
YAML = {
    "arc_easy": ("Question: {{question}}\nAnswer:", "{{choices.text}}", "{{choices.label.index(answerKey)}}"),
    "arc_challenge": ("Question: {{question}}\nAnswer:", "{{choices.text}}", "{{choices.label.index(answerKey)}}"),
    "piqa": ("Question: {{goal}}\nAnswer:", "{{[sol1, sol2]}}", "label"),
    "siqa": ("Q: {{context}} {{question}}\nA:", "{{[answerA, answerB, answerC]}}", "{{ (label|int) - 1 }}"),
    "openbookqa": ("question_stem", "{{choices.text}}", "{{choices.label.index(answerKey.lstrip())}}"),
    # super_glue/boolq/default.yaml reads aps/super_glue, whose `label` is google/boolq's `answer`.
    "boolq": ("{{passage}}\nQuestion: {{question}}?\nAnswer:", ["no", "yes"], "label"),
    "hellaswag": ("{{query}}", "choices", "{{label}}"),
}
TARGET_DELIMITER = " "  # every one of these tasks keeps lm-eval's default


def render(template, doc):
    """lm-eval's ``doc_to_text``/``doc_to_choice``/``doc_to_target`` for a YAML value."""
    if isinstance(template, list):
        return template
    if template in doc:
        return doc[template]
    text = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(
        template).render(**doc)
    if text.startswith("["):
        return ast.literal_eval(text)
    return int(text) if text.strip().isdigit() else text


def hellaswag_preprocess(text):  # lm_eval/tasks/hellaswag/utils.py
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_process_doc(doc):  # lm_eval/tasks/hellaswag/utils.py process_docs
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {**doc, "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]], "gold": int(doc["label"])}


def lm_eval_requests(task, doc):
    """``(requests, choices, gold)`` the way lm-eval's construct_requests builds them."""
    if task == "winogrande":  # preprocess_winogrande.py: doc_to_text is the gold index ("multiple inputs")
        idx = doc["sentence"].index("_")
        contexts = [doc["sentence"][:idx] + option for option in (doc["option1"], doc["option2"])]
        target = doc["sentence"][idx + 1:].strip()
        gold = {"1": 0, "2": 1}[doc["answer"]]
        return [(context, f"{TARGET_DELIMITER}{target}") for context in contexts], contexts, gold
    if task == "boolq":
        doc = {**doc, "label": int(doc["answer"])}
    if task == "hellaswag":
        doc = hellaswag_process_doc(doc)
    text, choice, target = YAML[task]
    context, choices, gold = render(text, doc), render(choice, doc), render(target, doc)
    return [(context, f"{TARGET_DELIMITER}{c}") for c in choices], choices, int(gold)


def lm_eval_acc(lls, choices, gold):  # process_results, output_type multiple_choice
    completion_len = np.array([float(len(i)) for i in choices])
    pred, pred_norm = np.argmax(lls), np.argmax(np.array(lls) / completion_len)
    return float(pred == gold), float(pred_norm == gold)


COMMONSENSE = ["arc_easy", "arc_challenge", "boolq", "piqa", "siqa", "hellaswag", "openbookqa", "winogrande"]

HAND_DOCS = {
    # WikiHow artifacts, a lower-case ctx_b and a string label: what the preprocessing is for.
    "hellaswag": {"activity_label": "Cooking", "ctx_a": "[header] How to boil an egg [title] Fill a pot.",
                  "ctx_b": "then", "endings": ["put the egg in [step] gently.", "eat  the pot."], "label": "0"},
    "openbookqa": {"question_stem": "A magnet sticks to", "answerKey": " B",
                   "choices": {"text": ["wood", "iron"], "label": ["A", "B"]}},
    "winogrande": {"sentence": "The cup fell off the shelf because the _ was tilted.", "option1": "cup",
                   "option2": "shelf", "answer": "2"},
}


@pytest.mark.parametrize("name", COMMONSENSE)
def test_request_strings_are_the_lm_eval_templates(name):
    docs = load_docs(TASKS[name]) + ([HAND_DOCS[name]] if name in HAND_DOCS else [])
    for doc in docs:
        ours = TASKS[name].to_choices(doc)
        requests, choices, gold = lm_eval_requests(name, doc)
        assert ours.requests() == requests
        assert ours.choices == choices
        assert ours.gold == gold


def test_hand_rendered_requests():
    """Three requests written out by hand, so the check above does not only compare code with code."""
    hella = TASKS["hellaswag"].to_choices(HAND_DOCS["hellaswag"])
    assert hella.requests() == [("Cooking: How to boil an egg. Fill a pot. Then", " put the egg in gently."),
                                ("Cooking: How to boil an egg. Fill a pot. Then", " eat the pot.")]
    wino = TASKS["winogrande"].to_choices(HAND_DOCS["winogrande"])
    assert wino.requests() == [("The cup fell off the shelf because the cup", " was tilted."),
                               ("The cup fell off the shelf because the shelf", " was tilted.")]
    assert wino.gold == 1
    siqa = TASKS["siqa"].to_choices({"context": "Sam lent Kim a pen.", "question": "What will Kim do?",
                                     "answerA": "thank Sam", "answerB": "cry", "answerC": "sleep", "label": "1"})
    assert siqa.requests()[0] == ("Q: Sam lent Kim a pen. What will Kim do?\nA:", " thank Sam")


def test_acc_norm_divides_by_the_choice_string_not_the_continuation():
    # Hand computation. lls -1.5 ("a", 1 char) and -4.0 ("bcd", 3 chars):
    #   acc: argmax(-1.5, -4.0) = 0
    #   lm-eval acc_norm: -1.5/1 = -1.5 < -4.0/3 = -1.333 -> 1
    #   dividing by len(" " + choice) instead: -1.5/2 = -0.75 > -4.0/4 = -1.0 -> 0 (the old, wrong, answer)
    assert metrics.choose([-1.5, -4.0], [len("a"), len("bcd")]) == (0, 1)
    assert lm_eval_acc([-1.5, -4.0], ["a", "bcd"], 1) == (0.0, 1.0)
    # Ties go to the first choice, as np.argmax.
    assert metrics.choose([-2.0, -2.0], [2, 2]) == (0, 0)


HAND_ITEMS = [  # (task, doc, fake log-likelihoods, expected acc, expected acc_norm), computed by hand below
    # ARC: choices "sunlight"(8) "sand"(4) "salt"(4) "plastic"(7), gold 0.
    # acc: argmax(-6, -5, -9, -9) = 1 -> 0.  acc_norm: -0.75, -1.25, -2.25, -1.29 -> 0 -> 1.
    ("arc_easy", {"question": "What do plants need?", "answerKey": "A",
                  "choices": {"text": ["sunlight", "sand", "salt", "plastic"], "label": ["A", "B", "C", "D"]}},
     [-6.0, -5.0, -9.0, -9.0], 0.0, 1.0),
    # BoolQ: choices "no"(2) "yes"(3), gold 1 (answer true).
    # acc: argmax(-2.0, -2.5) = 0 -> 0.  acc_norm: -1.0, -0.833 -> 1 -> 1.
    ("boolq", {"passage": "Water is wet.", "question": "is water wet", "answer": True}, [-2.0, -2.5], 0.0, 1.0),
    # WinoGrande: "choices" are the two filled-in contexts, 42 ("... the cup") and 44 ("... the shelf") chars,
    # gold 1.  acc: argmax(-3.0, -2.9) = 1 -> 1.  acc_norm: -0.0714, -0.0659 -> 1 -> 1.
    ("winogrande", HAND_DOCS["winogrande"], [-3.0, -2.9], 1.0, 1.0),
    # HellaSwag: choices "put the egg in gently."(22) "eat the pot."(12), gold 0.
    # acc: argmax(-20, -12) = 1 -> 0.  acc_norm: -0.909, -1.0 -> 0 -> 1.
    ("hellaswag", HAND_DOCS["hellaswag"], [-20.0, -12.0], 0.0, 1.0),
]


def fake_scorer(lls_per_doc):
    def score_documents(model, documents, **kwargs):
        assert [len(d) for d in documents] == [len(lls) for lls in lls_per_doc]
        return [[(ll, 1, False) for ll in lls] for lls in lls_per_doc]

    return score_documents


class CharTokenizer:
    bos_token_id, eos_token_id, pad_token_id = None, 0, 0

    def encode(self, text, add_special_tokens=True):
        return [ord(c) % 256 for c in text]


@pytest.mark.parametrize("name,doc,lls,acc,acc_norm", HAND_ITEMS)
def test_acc_and_acc_norm_on_hand_computed_items(monkeypatch, name, doc, lls, acc, acc_norm):
    monkeypatch.setattr(runner, "score_documents", fake_scorer([lls]))
    scores, _, _ = runner.evaluate_multiple_choice(None, CharTokenizer(), TASKS[name], [doc], EvalOptions(),
                                                   lambda n: None)
    _, choices, gold = lm_eval_requests(name, doc)
    assert lm_eval_acc(lls, choices, gold) == (acc, acc_norm)
    assert (scores["acc"], scores["acc_norm"]) == (acc, acc_norm)


@pytest.mark.parametrize("name", COMMONSENSE)
def test_acc_and_acc_norm_equal_lm_eval_on_the_sample_sets(monkeypatch, name):
    docs = load_docs(TASKS[name])
    rng = np.random.default_rng(len(name))
    lls = [list(-rng.uniform(1, 30, len(TASKS[name].to_choices(d).choices))) for d in docs]
    monkeypatch.setattr(runner, "score_documents", fake_scorer(lls))
    scores, _, n = runner.evaluate_multiple_choice(None, CharTokenizer(), TASKS[name], docs, EvalOptions(),
                                                   lambda n: None)
    expected = np.array([lm_eval_acc(ll, *lm_eval_requests(name, d)[1:]) for ll, d in zip(lls, docs)]).mean(axis=0)
    assert (scores["acc"], scores["acc_norm"]) == pytest.approx(tuple(expected))
    assert n == len(docs)


def test_fewshot_examples_are_lm_eval_turns(monkeypatch):
    """A shot is ``context + delimiter + gold choice`` then ``"\\n\\n"`` (partial scoring: the gold context)."""
    seen = []

    def capture(model, documents, **kwargs):
        seen.extend(documents)
        return [[(-1.0, 1, False)] * len(d) for d in documents]

    monkeypatch.setattr(runner, "score_documents", capture)
    monkeypatch.setattr(runner, "encode_pair", lambda tokenizer, context, continuation: (context, continuation))
    doc = HAND_DOCS["winogrande"]
    shot = {"sentence": "Ann gave Bo a gift because _ was kind.", "option1": "Ann", "option2": "Bo", "answer": "1"}
    monkeypatch.setattr(runner, "fewshot_docs", lambda *a, **k: [shot])
    runner.evaluate_multiple_choice(None, CharTokenizer(), TASKS["winogrande"], [doc], EvalOptions(shots=1),
                                    lambda n: None)
    assert seen[0][1] == ("Ann gave Bo a gift because Ann was kind.\n\nThe cup fell off the shelf because the shelf",
                          " was tilted.")


def test_encode_pair_is_lm_eval_tokenization(tiny_tokenizer_dir):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from mlxsmall.eval.loglikelihood import encode_pair

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    # Trailing spaces move into the continuation; the continuation is the joint text's tail.
    head, tail = encode_pair(tokenizer, "The capital of France is ", "Paris.")
    assert head == tokenizer.encode("The capital of France is")
    assert head + tail == tokenizer.encode("The capital of France is Paris.")
    # An empty context becomes the prefix token (no BOS here: EOS).
    head, tail = encode_pair(tokenizer, "", " Paris")
    assert head == [tokenizer.eos_token_id] and tail == tokenizer.encode(" Paris", add_special_tokens=False)
