"""What the vision plugin makes on the spot, so that nothing is downloaded.

- ``base_model: builtin:tiny-llava``: a Llava model with a tiny CLIP-style vision encoder (2 layers, 32x32 pictures
  in 8x8 patches: 16 image tokens) on the tiny Llama of ``builtin:tiny-llama``, random weights, with a
  ``LlavaProcessor`` (PIL image processor, no torchvision) and a chatml template that writes ``<image>`` for image
  parts. Written once into the gym cache.
- ``path: builtin:shapes?rows=2000&seed=0``: 32x32 pictures of 1 to 3 coloured shapes (square, circle, triangle in
  red, green, blue or yellow) asked "What colour is the shape?" (one shape; 4 answers) or "How many shapes?" (1-3;
  3 answers), in the llava-instruct-mix layout: ``messages`` with an image part and an ``images`` column.
- ``eval_shapes: N``: N held-out questions (pictures drawn with another seed; any that equals a training picture
  is skipped) answered greedily before and after training; the accuracy joins the run's metrics.
"""

from __future__ import annotations

import base64
import io
import random
from typing import Any, Iterator

from gym.api import BuiltinDataset, parse_options, write_rows_once

SHAPES = "shapes"
SHAPES_OPTIONS = {"rows": (1, 1_000_000), "seed": (0, 2**31 - 1)}
SHAPES_VERSION = 1
SIDE = 32
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40)}
KINDS = ("square", "circle", "triangle")
COLOUR_QUESTION = "What colour is the shape?"
COUNT_QUESTION = "How many shapes?"
EVAL_SEED_OFFSET = 1_000_003

TINY_LLAVA_VERSION = 2
TEXT_MODEL = "builtin:tiny-llama"
IMAGE_TOKEN = "<image>"
TINY_LLAVA_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ------------------------------------------------------------------------------------------ tiny-llava


def build_tiny_llava(folder: Any, vision_hidden: int = 64, vision_layers: int = 2, seed: int = 0) -> None:
    """Write a random tiny Llava (model, tokenizer, processor, chat template) into ``folder``."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from transformers import AutoConfig, AutoTokenizer

    from gym.api import resolve_source

    base = resolve_source(TEXT_MODEL, "base_model")  # the tiny Llama and its tokenizer
    tokenizer = AutoTokenizer.from_pretrained(base)
    # the extra special tokens are a list that this replaces: keep the chat roles' tokens in it (they end turns)
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>", IMAGE_TOKEN]})
    tokenizer.chat_template = TINY_LLAVA_TEMPLATE
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN, num_additional_image_tokens=1, chat_template=TINY_LLAVA_TEMPLATE,
    )
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=4, image_size=SIDE, patch_size=8,
                              projection_dim=vision_hidden)
    text = AutoConfig.from_pretrained(base)
    text.vocab_size = len(tokenizer)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def materialize_tiny_llava(path: str) -> str:
    """The folder of ``builtin:tiny-llava`` in the gym cache, written the first time."""
    import shutil
    import tempfile
    from pathlib import Path

    from gym.api import gym_home, publish, resolve_source

    root = gym_home() / "models"
    text_folder = Path(resolve_source(TEXT_MODEL, "base_model")).name  # a new tiny Llama makes a new tiny Llava
    final = root / f"tiny-llava-v{TINY_LLAVA_VERSION}-{text_folder}"
    if (final / "config.json").is_file():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".tiny-llava-", dir=root))
    try:
        build_tiny_llava(build)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    publish(build, final)
    return str(final)


# ------------------------------------------------------------------------------------------------ shapes


def shapes_dataset() -> BuiltinDataset:
    return BuiltinDataset(
        name=SHAPES,
        materialize=materialize_shapes,
        check=lambda path: parse_options(path, SHAPES_OPTIONS),
        description="32x32 pictures of 1-3 coloured shapes asked 'What colour is the shape?' or 'How many shapes?' "
        "(options: rows=2000, seed=0); columns messages (with an image part) and images",
    )


def draw_shapes(rng: random.Random, count: int, colours: list[str]) -> Any:
    """A black 32x32 picture with ``count`` shapes, one per quarter (so they never overlap)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIDE, SIDE), (0, 0, 0))
    pen = ImageDraw.Draw(image)
    for quarter, colour in zip(rng.sample(range(4), count), colours):
        size = rng.randint(7, 11)
        x = (quarter % 2) * 16 + rng.randint(1, 15 - size)
        y = (quarter // 2) * 16 + rng.randint(1, 15 - size)
        fill = COLOURS[colour]
        kind = rng.choice(KINDS)
        if kind == "square":
            pen.rectangle([x, y, x + size, y + size], fill=fill)
        elif kind == "circle":
            pen.ellipse([x, y, x + size, y + size], fill=fill)
        else:
            pen.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=fill)
    return image


def _png(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def shapes_rows(rows: int, seed: int) -> Iterator[dict[str, Any]]:
    """Half colour questions (one shape), half counting questions (1-3 shapes of any colours)."""
    rng = random.Random(seed)
    names = list(COLOURS)
    for _ in range(rows):
        if rng.random() < 0.5:
            colour = rng.choice(names)
            image, question, answer, kind = draw_shapes(rng, 1, [colour]), COLOUR_QUESTION, colour, "colour"
        else:
            count = rng.randint(1, 3)
            image = draw_shapes(rng, count, [rng.choice(names) for _ in range(count)])
            question, answer, kind = COUNT_QUESTION, str(count), "count"
        yield {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ],
            "images": [_png(image)],
            "kind": kind,
            "answer": answer,
        }


def materialize_shapes(path: str) -> str:
    options = parse_options(path, SHAPES_OPTIONS)
    rows, seed = options.get("rows", 2000), options.get("seed", 0)
    return write_rows_once(f"shapes-v{SHAPES_VERSION}-n{rows}-s{seed}.jsonl", shapes_rows(rows, seed))


def shapes_entry(cfg: Any) -> Any | None:
    """The config's ``builtin:shapes`` dataset entry, if any."""
    for entry in getattr(cfg, "datasets", None) or ():
        if entry.path.startswith("builtin:") and entry.path[len("builtin:"):].split("?", 1)[0] == SHAPES:
            return entry
    return None


def held_out_rows(cfg: Any, count: int) -> list[dict[str, Any]]:
    """``count`` questions on pictures never trained on (another seed; exact repeats of a training picture out)."""
    entry = shapes_entry(cfg)
    options = parse_options(entry.path, SHAPES_OPTIONS)
    seed, trained = options.get("seed", 0), options.get("rows", 2000)
    seen = {row["images"][0] for row in shapes_rows(trained, seed)}
    out = []
    for row in shapes_rows(count * 2 + 50, seed + EVAL_SEED_OFFSET):
        if row["images"][0] not in seen:
            out.append(row)
        if len(out) == count:
            break
    return out


# ------------------------------------------------------------------------------------------- evaluation


def answer_questions(cfg: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 64,
                     max_new_tokens: int = 4) -> list[str]:
    """Greedy answers of ``model`` to ``rows`` (llava-instruct-mix rows), with their pictures."""
    import torch

    from gym.api import IGNORE_INDEX
    from gym.plugins.vision_data import VisionChatStrategy, VisionCollator

    entry = shapes_entry(cfg) or cfg.datasets[0]
    strategy = VisionChatStrategy(tokenizer, cfg.model_copy(update={"train_on_inputs": False}), entry)
    collator = VisionCollator(cfg, tokenizer)
    columns = {"messages": [r["messages"] for r in rows], "images": [r["images"] for r in rows]}
    out = strategy.process_batch(columns)
    prompts = []
    for ids, labels, images in zip(out["input_ids"], out["labels"], out["images"]):
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        prompts.append({"input_ids": ids[:first], "images": images})
    stop = sorted(set(tokenizer.all_special_ids))
    device = next(model.parameters()).device
    answers: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                width = max(len(p["input_ids"]) for p in chunk)
                ids = torch.full((len(chunk), width), collator.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, prompt in enumerate(chunk):  # left padding: generation starts where every prompt ends
                    ids[i, width - len(prompt["input_ids"]):] = torch.tensor(prompt["input_ids"])
                    mask[i, width - len(prompt["input_ids"]):] = 1
                images = collator.image_tensors(collator.pictures(chunk))
                images = {k: v.to(device) if hasattr(v, "to") else v for k, v in images.items()}
                generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **images,
                                           max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                           pad_token_id=collator.pad_id)
                for row in generated[:, width:].tolist():
                    cut = next((i for i, t in enumerate(row) if t in stop), len(row))
                    answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def shapes_accuracy(cfg: Any, model: Any, tokenizer: Any, count: int) -> dict[str, float]:
    """Exact-match accuracy on ``count`` held-out questions, overall and per kind (colour, count)."""
    rows = held_out_rows(cfg, count)
    answers = answer_questions(cfg, model, tokenizer, rows)
    scores: dict[str, list[float]] = {"all": [], "colour": [], "count": []}
    for row, answer in zip(rows, answers):
        right = float(answer == row["answer"])
        scores["all"].append(right)
        scores[row["kind"]].append(right)
    return {kind: sum(values) / len(values) for kind, values in scores.items() if values}


def ShapesEvaluation(cfg: Any) -> Any:  # noqa: N802 - builds the callback class only when a run needs it
    """The callback that scores ``eval_shapes`` held-out questions when training starts and ends."""
    from transformers import TrainerCallback

    class _ShapesEvaluation(TrainerCallback):
        def __init__(self) -> None:
            self.before: dict[str, float] = {}
            self.gym_metrics: dict[str, float] = {}
            self.gym_summary: list[str] = []

        def _score(self, model, processing_class) -> dict[str, float]:
            return shapes_accuracy(cfg, model, processing_class, cfg.eval_shapes)

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.before = self._score(model, processing_class)

        def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            after = self._score(model, processing_class)
            self.gym_metrics = {f"shapes_accuracy{'' if k == 'all' else '_' + k}": round(v, 4) for k, v in after.items()}
            self.gym_metrics.update({f"shapes_accuracy{'' if k == 'all' else '_' + k}_before": round(v, 4)
                                     for k, v in self.before.items()})
            self.gym_summary = [
                f"shapes: {100 * self.before.get('all', 0):.1f}% -> {100 * after.get('all', 0):.1f}% of "
                f"{cfg.eval_shapes} held-out questions right (colour {100 * self.before.get('colour', 0):.0f}% -> "
                f"{100 * after.get('colour', 0):.0f}%, chance 25%; count {100 * self.before.get('count', 0):.0f}% -> "
                f"{100 * after.get('count', 0):.0f}%, chance 33%)"
            ]

    return _ShapesEvaluation()
