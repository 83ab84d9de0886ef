"""Visual question answering for vision-language models: the scoring and the evaluator of the tasks of
kind "vqa" (listed in `eval/tasks.py`'s table, run by `eval/runner.py`):

- `vqav2`: open-ended answers, VQAv2 accuracy (min(#annotators who gave the answer / 3, 1), averaged over
  the 10 leave-one-out annotator subsets, after the official answer normalisation).
- `textvqa`: the same metric on questions about text in the image.
- `gqa`: short answers, normalised exact match (sample set only: the hub GQA splits keep images apart).
- `scienceqa`: multiple choice; the choice with the highest log-likelihood given image + question wins.

Sample sets (`eval/data/vqa_sample*.jsonl`) are offline and tiny: their images are drawn with Pillow at run
time from a spec (`{"draw": {"shape": "circle", "colour": "red"}}` or `{"draw": {"text": "42"}}`).
`--data hub` reads the real datasets (lmms-lab/VQAv2, lmms-lab/textvqa, derek-thomas/ScienceQA) through the
`datasets` package, imported only then.

    mlxsmall eval ./my-vlm --tasks vqav2,scienceqa --limit 50
"""

import re
from typing import Dict, List

import mlx.core as mx

from mlxsmall.errors import MlxsmallError
from mlxsmall.eval.shapes import draw_shape, draw_text
from mlxsmall.eval.tasks import DATA_DIR, VQATask
from mlxsmall.images import image_processor_for, load_image
from mlxsmall.vlm import IMAGE_PLACEHOLDER, encode_images, format_prompt, generate_vlm, tokenize_with_images

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQA prompt

# --------------------------------------------------------------------------- VQAv2 answer normalisation

CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                "wont": "won't", "im": "i'm", "ive": "i've", "youre": "you're", "thats": "that's",
                "whats": "what's", "wasnt": "wasn't", "werent": "weren't", "shouldnt": "shouldn't",
                "couldnt": "couldn't", "wouldnt": "wouldn't", "didnt": "didn't", "hasnt": "hasn't"}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:']")
PERIOD = re.compile(r"(?<!\d)\.(?!\d)")  # a period not inside a number


def normalize_vqa_answer(answer: str) -> str:
    """The official VQA evaluation's processing (punctuation, digits, articles, contractions)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = PERIOD.sub("", PUNCTUATION.sub("", text))
    words = []
    for word in text.split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: List[str]) -> float:
    """VQAv2 accuracy of one prediction against the annotators' answers (usually 10)."""
    if not answers:
        return 0.0
    predicted = normalize_vqa_answer(prediction)
    gold = [normalize_vqa_answer(a) for a in answers]
    if len(gold) == 1:
        return float(predicted == gold[0])
    scores = []
    for left_out in range(len(gold)):
        others = gold[:left_out] + gold[left_out + 1:]
        scores.append(min(1.0, sum(g == predicted for g in others) / 3))
    return sum(scores) / len(scores)


def first_phrase(text: str) -> str:
    return text.strip().split("\n")[0].strip()


# --------------------------------------------------------------------------- documents


def doc_image(doc: dict):
    """A PIL image for a document: drawn from a spec, a path (relative to eval/data), a URL or a hub image."""
    image = doc.get("image")
    if image is None:
        raise MlxsmallError(f"document {doc.get('id', '?')}: no image")
    if isinstance(image, dict) and "draw" in image:
        spec = image["draw"]
        if "text" in spec:
            return draw_text(spec["text"], spec.get("size", 64))
        return draw_shape(spec["shape"], spec["colour"], spec.get("size", 64))
    if isinstance(image, str) and not image.startswith(("http://", "https://")) and (DATA_DIR / image).exists():
        return load_image(DATA_DIR / image)
    return load_image(image)


# --------------------------------------------------------------------------- evaluator


def choice_loglikelihoods(model, tokenizer, prompt_ids: List[int], image_features, choices: List[str]) -> List[float]:
    """Sum of log p(choice tokens | image + question) for each choice (one forward pass per choice)."""
    scores = []
    for choice in choices:
        continuation = tokenizer.encode(" " + choice if not choice.startswith(" ") else choice,
                                        add_special_tokens=False)
        ids = mx.array(prompt_ids + continuation)[None]
        embeddings = model.embed_inputs(ids, image_features=image_features)
        logits = model.language_model(ids, input_embeddings=embeddings).astype(mx.float32)
        n = len(continuation)
        positions = logits[0, -n - 1:-1]
        logprobs = positions - mx.logsumexp(positions, axis=-1, keepdims=True)
        picked = mx.take_along_axis(logprobs, mx.array(continuation)[:, None], axis=-1)
        scores.append(picked.sum().item())
    return scores


def evaluate_vqa(model, tokenizer, task: VQATask, docs, options, report):
    if not hasattr(model, "encode_image"):
        raise MlxsmallError(f"{task.name}: needs a vision-language model (see `mlxsmall vlm build`)")
    processor = image_processor_for(model.vision_config)
    chat = {"on": True, "off": False}.get(getattr(options, "chat", "auto"))
    totals: Dict[str, float] = {}
    examples, encode_seconds = [], 0.0
    for doc in docs:
        request = task.to_request(doc)
        features, seconds = encode_images(model, processor, [doc_image(doc)])
        encode_seconds += seconds
        if task.style == "choice":
            letters = "ABCDEFGH"
            listed = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(request["choices"]))
            text = format_prompt(tokenizer, f"{IMAGE_PLACEHOLDER}\n{request['question']}\n{listed}\nAnswer:", 1,
                                 chat=chat)
            ids = tokenize_with_images(tokenizer, text, model.args.image_token_index, model.num_image_tokens)
            scores = choice_loglikelihoods(model, tokenizer, ids, features, request["choices"])
            best = max(range(len(scores)), key=scores.__getitem__)
            prediction, result = request["choices"][best], {"accuracy": float(best == request["answer"])}
        else:
            max_tokens = options.max_tokens or task.max_tokens
            prediction = first_phrase(generate_vlm(
                model, tokenizer, processor, f"{request['question']}\n{SHORT_ANSWER}", image_features=features,
                chat=chat, max_tokens=max_tokens, stop=("\n",)))
            if task.style == "vqa":
                result = {"vqa_accuracy": vqa_accuracy(prediction, request["answers"])}
            else:
                result = {"exact_match": float(normalize_vqa_answer(prediction) ==
                                               normalize_vqa_answer(request["answers"][0]))}
        for key, value in result.items():
            totals[key] = totals.get(key, 0.0) + value
        if len(examples) < options.examples:
            examples.append({"question": request["question"], "prediction": prediction,
                             "reference": request.get("answers", request.get("choices", [None]))[:3], **result})
        report(1)
    n = len(docs)
    scores = {key: value / n for key, value in totals.items()}
    scores["image_encode_ms"] = 1000 * encode_seconds / n
    return scores, examples, n
