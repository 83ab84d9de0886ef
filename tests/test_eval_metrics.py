"""Every evaluation metric against hand-computed cases."""

import math

import mlxsmall  # noqa: F401  (preloads OpenBLAS before mlx)
import mlx.core as mx
import pytest

from mlxsmall.eval import metrics
from mlxsmall.eval.tasks import gsm8k_number, is_refusal


# --- QA ---------------------------------------------------------------------------------------


def test_squad_normalisation_and_exact_match():
    assert metrics.normalize_answer("  The Eiffel   Tower! ") == "eiffel tower"
    assert metrics.normalize_answer("An apple, a day.") == "apple day"
    assert metrics.exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert metrics.exact_match("Eiffel", "Eiffel tower") == 0.0


def test_token_f1_hand_computed():
    # pred -> [big, red, dog], ref -> [red, dog, barked]: 2 shared, P = R = 2/3.
    assert metrics.f1_score("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    # Repeated tokens count once per occurrence: pred [dog, dog], ref [dog] -> P 1/2, R 1, F1 2/3.
    assert metrics.f1_score("dog dog", "dog") == pytest.approx(2 / 3)
    assert metrics.f1_score("cat", "dog") == 0.0
    assert metrics.f1_score("the", "a") == 1.0  # both normalise to nothing


# --- ROUGE (rouge-score package) --------------------------------------------------------------


def test_rouge_hand_computed():
    scores = metrics.rouge("the cat sat", "the cat ran away")
    # unigrams: overlap {the, cat} = 2, P = 2/3, R = 2/4 -> F = 4/7
    assert scores["rouge1"] == pytest.approx(4 / 7)
    # bigrams: overlap {the cat} = 1, P = 1/2, R = 1/3 -> F = 2/5
    assert scores["rouge2"] == pytest.approx(2 / 5)
    # LCS "the cat" = 2 -> same as rouge1
    assert scores["rougeL"] == pytest.approx(4 / 7)
    assert metrics.rouge("Same words here.", "same words here")["rougeL"] == pytest.approx(1.0)


# --- SQL --------------------------------------------------------------------------------------

# Execution accuracy (test suites): tests/test_sql_suite.py


def test_sql_exact_match_normalisation():
    assert metrics.sql_exact_match("select  name from city where id = 3;", "SELECT name FROM city WHERE id=3") == 1.0
    assert metrics.sql_exact_match("SELECT name FROM city", "SELECT id FROM city") == 0.0


# --- log-likelihood scoring -------------------------------------------------------------------


class PreferToken:
    """A fake model: every position puts logit ``strength`` on one token, 0 elsewhere."""

    def __init__(self, vocab: int, token: int, strength: float = 5.0):
        self.vocab, self.token, self.strength = vocab, token, strength

    def __call__(self, inputs):
        batch, length = inputs.shape
        row = mx.zeros((self.vocab,)).at[self.token].add(self.strength)
        return mx.broadcast_to(row, (batch, length, self.vocab))


def test_multiple_choice_picks_the_likely_choice():
    model = PreferToken(vocab=10, token=7)
    requests = [([1, 2], [5]), ([1, 2], [7]), ([1, 2], [3])]
    scored = metrics.loglikelihoods(model, requests, batch_size=2)
    sums = [s for s, _, _ in scored]
    assert metrics.choose(sums, [1, 1, 1]) == (1, 1)
    # log p(7) = 5 - log(e^5 + 9); log p(other) = -log(e^5 + 9)
    assert sums[1] == pytest.approx(5 - math.log(math.exp(5) + 9), rel=1e-5)
    assert sums[0] == pytest.approx(-math.log(math.exp(5) + 9), rel=1e-5)
    assert [greedy for _, _, greedy in scored] == [False, True, False]


def test_length_normalisation_changes_the_choice():
    # summed: -3 beats -4; per character: -4/4 = -1 beats -3/1 = -3
    assert metrics.choose([-4.0, -3.0], [4, 1]) == (1, 0)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    class Uniform:
        def __call__(self, inputs):
            return mx.zeros((*inputs.shape, 37))

    result = metrics.perplexity(Uniform(), list(range(30)) * 5, window=16, batch_size=3)
    assert result["perplexity"] == pytest.approx(37.0, rel=1e-5)
    assert result["tokens"] == 149  # every token but the first is predicted exactly once


def test_right_padding_does_not_change_scores(make_tiny_model):
    from mlxsmall.loading import load_model

    model, _ = load_model(make_tiny_model("llama"))
    requests = [([5, 6, 7, 8, 9, 10], [11, 12]), ([5], [20]), ([30, 31, 32], [33, 34, 35, 36])]
    one = metrics.loglikelihoods(model, requests, batch_size=1)
    batched = metrics.loglikelihoods(model, requests, batch_size=3)
    for (a, n, _), (b, m, _) in zip(one, batched):
        assert n == m and a == pytest.approx(b, abs=1e-4)


# --- answer extraction ------------------------------------------------------------------------


def test_gsm8k_answer_extraction():
    assert gsm8k_number("3 * 4 = 12 apples.\n#### 12") == "12"
    assert gsm8k_number("So she pays $1,250.00 in total.") == "1250"
    assert gsm8k_number("The answer is 7. Next question 9") == "9"
    assert gsm8k_number("no digits") is None


def test_refusal_classifier():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot assist with this request.")
    assert not is_refusal("Sure! To kill a Python process, run `kill <pid>`.")
