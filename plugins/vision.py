"""The vision plugin: fine-tuning vision-language models (images and text in, text out).

Setting ``processor_type`` (``AutoProcessor``) makes a run a *vision* run:

- the model loads through ``AutoModelForImageTextToText`` (hook ``gym_model_class``; ``model_type`` still wins) and
  the processor (``processor_kwargs`` go to its ``from_pretrained``);
- ``type: chat_template`` datasets read messages whose ``content`` is a list of parts (``{type: text, text}``,
  ``{type: image, path | url | base64 | image}``, or a bare ``{type: image}`` taking the next picture of the row's
  ``images`` column, as in Hugging Face's llava-instruct-mix datasets). Text is tokenized once into the prepared
  data cache, with each image's tokens already in place (so lengths are known); the pictures themselves are read
  and turned into pixels by the collator, batch by batch (:mod:`gym.plugins.vision_data`);
- ``freeze_mm_modules`` (default true) keeps the vision encoder frozen, for LoRA and full fine-tuning alike;
- the processor is saved with the model, so ``AutoProcessor`` + ``AutoModelForImageTextToText`` (and peft for an
  adapter) load the output.

It also adds ``base_model: builtin:tiny-llava`` (a tiny CLIP-style encoder on a tiny Llama, made on the spot),
``path: builtin:shapes`` (pictures of coloured shapes and questions about them) and ``eval_shapes`` (accuracy on
held-out shapes questions before and after training): :mod:`gym.plugins.vision_builtins`.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import Field

from gym.api import ConfigProblem, DatasetStrategy, StrictConfig, TrainingMethod, hookimpl

METHOD = "vision"
AUDIO_WORDS = ("voxtral", "whisper", "audio", "speech", "wav2vec", "seamless", "clap", "encodec", "musicgen")
_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class VisionSettings(StrictConfig):
    """Keys of the vision plugin."""

    processor_type: str | None = Field(
        None,
        description="The transformers processor class of a vision-language model (AutoProcessor); setting it trains "
        "on images and text: the model loads as AutoModelForImageTextToText and chat_template datasets may hold "
        "image parts.",
    )
    processor_kwargs: dict[str, Any] | None = Field(
        None, description="Keyword arguments for the processor's from_pretrained (e.g. {max_pixels: 200704})."
    )
    image_size: Union[int, tuple[int, int], None] = Field(
        None,
        description="Resize every image before the processor: a number fits it into a padded square of that side, "
        "[width, height] resizes it to exactly that (default: the processor's own resizing only).",
    )
    image_resize_algorithm: Literal["bilinear", "bicubic", "lanczos", "nearest"] = Field(
        "bilinear", description="The PIL resampling used by image_size."
    )
    freeze_mm_modules: bool = Field(
        True,
        description="Keep the vision encoder's weights frozen (LoRA adapters placed in it stay frozen too); "
        "false trains it as well.",
    )
    eval_shapes: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Before and after training, answer this many held-out builtin:shapes questions greedily (with "
        "their pictures) and report the accuracy (needs a builtin:shapes dataset).",
    )


@hookimpl
def gym_config_schema():
    return VisionSettings


def is_vision(cfg: Any) -> bool:
    return bool(getattr(cfg, "processor_type", None))


@hookimpl
def gym_validate_config(cfg):
    problems: list[ConfigProblem] = []
    if not is_vision(cfg):
        for key in ("processor_kwargs", "image_size", "eval_shapes"):
            if getattr(cfg, key) is not None:
                problems.append(ConfigProblem(key, "only used for vision-language models: set processor_type "
                                                   "(AutoProcessor) too"))
        return problems
    name = cfg.processor_type
    if not _CLASS_NAME.match(name):
        problems.append(ConfigProblem("processor_type", f"{name!r} is not a transformers class name (AutoProcessor)"))
    elif any(word in name.lower() for word in AUDIO_WORDS):
        problems.append(ConfigProblem(
            "processor_type",
            f"{name} is an audio processor; audio input (speech and sound models) is not supported by gym yet, only "
            "images (use an image-text-to-text model with AutoProcessor)",
        ))
    if getattr(cfg, "sample_packing", False):
        problems.append(ConfigProblem(
            "sample_packing",
            "packing is not supported for vision-language rows: each row's image features are placed at its image "
            "tokens by the model, and packed rows would mix several rows' images in one sequence; set "
            "sample_packing: false (it is the default)",
        ))
    if getattr(cfg, "eval_sample_packing", None):
        problems.append(ConfigProblem("eval_sample_packing", "packing is not supported for vision-language rows"))
    if cfg.excess_length_strategy == "truncate":
        problems.append(ConfigProblem(
            "excess_length_strategy",
            "truncating a vision-language row could cut through an image's tokens; use drop (the default), or raise "
            "sequence_len",
        ))
    if getattr(cfg, "rl", None) or getattr(cfg, "reward_model", None):
        problems.append(ConfigProblem("processor_type", "vision-language models train with supervised fine-tuning "
                                                        "only (rl and reward_model are not supported with it)"))
    if isinstance(cfg.image_size, int) and cfg.image_size < 1 or (
        isinstance(cfg.image_size, tuple) and min(cfg.image_size) < 1
    ):
        problems.append(ConfigProblem("image_size", "must be positive"))
    if cfg.eval_shapes is not None:
        from gym.plugins.vision_builtins import shapes_entry

        if shapes_entry(cfg) is None:
            problems.append(ConfigProblem("eval_shapes", "needs a `path: builtin:shapes` dataset to ask questions of"))
    return problems


@hookimpl
def gym_training_method(cfg):
    if not is_vision(cfg) or getattr(cfg, "rl", None) or getattr(cfg, "reward_model", None):
        return None
    from gym.plugins.vision_data import VisionRows

    return TrainingMethod(
        name=METHOD,
        build_trainer="gym.plugins.sft.trainer:build_trainer",  # the SFT trainer: only the rows and collator differ
        arguments={"train_sampling_strategy": "group_by_length"} if getattr(cfg, "group_by_length", False) else {},
        data_shape=VisionRows(cfg),
        description="supervised fine-tuning of a vision-language model: input_ids / labels rows with their images",
    )


@hookimpl
def gym_dataset_strategies():
    from gym.prompt_strategies.chat_template import ALIASES, ChatTemplateOptions

    return [
        DatasetStrategy(
            name="chat_template",
            builder="gym.plugins.vision_data:build_strategy",
            columns=("input_ids", "labels", "images"),
            methods=(METHOD,),
            options=ChatTemplateOptions,
            description="Conversations whose messages hold text and image parts (llava-instruct-mix layout), "
            "rendered with the processor's chat template; assistant turns trained (vision runs).",
            aliases=ALIASES,
        )
    ]


@hookimpl
def gym_data_settings(cfg):
    """The processor and the resizing decide how many tokens each image takes: part of the cache key."""
    if not is_vision(cfg):
        return None
    return {
        "processor_type": cfg.processor_type,
        "processor_kwargs": cfg.processor_kwargs,
        "image_size": list(cfg.image_size) if isinstance(cfg.image_size, tuple) else cfg.image_size,
        "image_resize_algorithm": cfg.image_resize_algorithm,
    }


@hookimpl
def gym_model_class(cfg):
    return "AutoModelForImageTextToText" if is_vision(cfg) else None


@hookimpl
def gym_builtin_models():
    return {"tiny-llava": "gym.plugins.vision_builtins:materialize_tiny_llava"}


@hookimpl
def gym_builtin_datasets():
    from gym.plugins.vision_builtins import shapes_dataset

    return [shapes_dataset()]


@hookimpl
def gym_after_model_load(cfg, model):
    if is_vision(cfg) and cfg.freeze_mm_modules:
        from gym.plugins.vision_data import freeze_vision_encoder

        freeze_vision_encoder(model)


@hookimpl
def gym_after_wrap_model(cfg, model):
    """LoRA adapters that a target pattern put inside the vision encoder stay frozen with freeze_mm_modules."""
    if is_vision(cfg) and cfg.freeze_mm_modules and getattr(cfg, "adapter", None):
        from gym.plugins.vision_data import freeze_vision_encoder

        freeze_vision_encoder(model)


@hookimpl
def gym_callbacks(cfg):
    if not is_vision(cfg) or not cfg.eval_shapes:
        return None
    from gym.plugins.vision_builtins import ShapesEvaluation

    return [ShapesEvaluation(cfg)]


@hookimpl(wrapper=True)
def gym_after_train(cfg, tokenizer, output_dir):
    """Save the processor (with the trained tokenizer and its chat template) next to the model, and in
    ``output_dir/merged`` when the lora plugin merged the adapter there (a wrapper: it runs after the others)."""
    result = yield
    if is_vision(cfg):
        from pathlib import Path

        from gym.plugins.vision_data import load_processor

        processor = load_processor(cfg, tokenizer)
        processor.save_pretrained(output_dir)
        merged = Path(output_dir) / "merged"
        if (merged / "config.json").is_file():
            processor.save_pretrained(str(merged))
    return result


@hookimpl
def gym_model_card(cfg):
    if not is_vision(cfg):
        return None
    loader = ("AutoModelForImageTextToText` (the base model) and `peft.PeftModel"
              if getattr(cfg, "adapter", None) else "AutoModelForImageTextToText")
    section = (
        "## Using it with images\n\n"
        f"The processor is saved with the model. Load both with `AutoProcessor` and `{loader}`, render the "
        "messages (content parts `{'type': 'image'}` and `{'type': 'text', 'text': ...}`) with "
        "`processor.apply_chat_template(messages, add_generation_prompt=True)`, and call "
        "`processor(text=..., images=[...], return_tensors='pt')` for `model.generate`."
    )
    return {"tags": ["image-text-to-text", "vision"], "sections": [section]}
