"""Visual question answering for vision-language models (tasks of kind "vqa").

Importing this module registers the tasks with `eval/tasks.py` and their evaluator with `eval/runner.py`:

- `vqav2`: open-ended answers, VQAv2 accuracy (min(#annotators who gave the answer / 3, 1), averaged over
  the 10 leave-one-out annotator subsets, after the official answer normalisation).
- `textvqa`: the same metric on questions about text in the image.
- `gqa`: short answers, normalised exact match (sample set only: the hub GQA splits keep images apart).
- `scienceqa`: multiple choice; the choice with the highest log-likelihood given image + question wins.

Sample sets (`eval/data/vqa_sample*.jsonl`) are offline and tiny: their images are drawn with Pillow at run
time from a spec (`{"draw": {"shape": "circle", "colour": "red"}}` or `{"draw": {"text": "42"}}`).
`--data hub` reads the real datasets (lmms-lab/VQAv2, lmms-lab/textvqa, derek-thomas/ScienceQA) through the
`datasets` package, imported only then.

    mlxsmall vlm eval ./my-vlm --tasks vqav2,scienceqa --limit 50
"""

import re
from dataclasses import dataclass
from typing import Callable, Dict, List

import mlx.core as mx

from mlxsmall.errors import MlxsmallError

from mlxsmall.eval.runner import register_evaluator
from mlxsmall.eval.tasks import DATA_DIR, HubSource, Task, register_task

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQA prompt
GROUP = "vqa"

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
    from mlxsmall.vlm import draw_shape, load_image

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


def draw_text(text: str, size: int = 64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text)
    draw.text(((size - (right - left)) / 2, (size - (bottom - top)) / 2), text, fill=(0, 0, 0))
    return image


def vqav2_request(doc):
    answers = doc["answers"]
    if answers and isinstance(answers[0], dict):  # hub layout: [{"answer": ..., "answer_confidence": ...}]
        answers = [a["answer"] for a in answers]
    return {"question": doc["question"], "answers": list(answers)}


def gqa_request(doc):
    return {"question": doc["question"], "answers": [doc["answer"]]}


def scienceqa_request(doc):
    question = doc["question"]
    if doc.get("hint"):
        question = f"Context: {doc['hint']}\n{question}"
    return {"question": question, "choices": list(doc["choices"]), "answer": int(doc["answer"])}


@dataclass
class VQATask(Task):
    """``style``: "vqa" (VQAv2 accuracy), "exact" (normalised exact match) or "choice" (log-likelihood)."""

    style: str = "vqa"
    to_request: Callable[[dict], dict] = None
    max_tokens: int = 10
    kind: str = "vqa"


for task in [
    VQATask("vqav2", description="VQAv2 open-ended visual questions (VQA accuracy)", sample_file="vqa_sample.jsonl",
            hub=HubSource("lmms-lab/VQAv2", None, "validation"), to_request=vqav2_request, group=GROUP),
    VQATask("textvqa", description="TextVQA questions about text in images (VQA accuracy)",
            sample_file="vqa_sample_text.jsonl", hub=HubSource("lmms-lab/textvqa", None, "validation"),
            to_request=vqav2_request, group=GROUP),
    VQATask("gqa", description="GQA-style short answers (exact match; sample set only)",
            sample_file="vqa_sample_gqa.jsonl", style="exact", to_request=gqa_request, group=GROUP),
    VQATask("scienceqa", description="ScienceQA-IMG multiple choice (log-likelihood)",
            sample_file="vqa_sample_mc.jsonl", hub=HubSource("derek-thomas/ScienceQA", None, "test"),
            keep=lambda doc: doc.get("image") is not None, style="choice", to_request=scienceqa_request,
            group=GROUP),
]:
    register_task(task)


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


def vision_processor(model):
    from mlxsmall.vlm import ImageProcessor

    config = model.vision_config
    return ImageProcessor(config.image_size, config.image_mean, config.image_std, center_crop=config.is_clip)


@register_evaluator("vqa")
def evaluate_vqa(model, tokenizer, task: VQATask, docs, options, report):
    from mlxsmall.vlm import (IMAGE_PLACEHOLDER, encode_images, format_prompt, generate_vlm,
                              tokenize_with_images)

    if not hasattr(model, "encode_image"):
        raise MlxsmallError(f"{task.name}: needs a vision-language model (mlxsmall vlm eval MODEL)")
    processor = vision_processor(model)
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
