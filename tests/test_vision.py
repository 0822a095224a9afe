"""The vision plugin: keys, the multimodal chat_template strategy, the collator, LoRA and full fine-tuning of
builtin:tiny-llava on builtin:shapes, and outputs that plain transformers / peft load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gym.api import ConfigError, DataError, IGNORE_INDEX, RowError
from gym.testing import call_strategy, plugin_manager, run_config, validate

MODEL = "builtin:tiny-llava"
VISION = {"base_model": MODEL, "processor_type": "AutoProcessor"}
LORA_TARGETS = r"model.language_model.layers.[\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj"


def picture(path: Path, colour: tuple[int, int, int], side: int = 32) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), colour).save(path)
    return path


def chat(question: str = "What colour is the shape?", answer: str = "red", image: dict | None = None) -> list[dict]:
    return [
        {"role": "user", "content": [image or {"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def problems_of(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(config)
    return caught.value.problems


# ------------------------------------------------------------------------------------------- keys


def test_vision_keys_validate_and_pick_the_method_and_model_class():
    manager = plugin_manager()
    cfg = validate({**VISION, "datasets": [{"path": "builtin:shapes", "type": "chat_template"}], "image_size": 32,
                    "image_resize_algorithm": "bicubic", "processor_kwargs": {"do_resize": True},
                    "remove_unused_columns": False, "sample_packing": False}, manager)
    assert manager.training_method(cfg).name == "vision"
    assert manager.call("gym_model_class", cfg=cfg) == "AutoModelForImageTextToText"
    assert cfg.freeze_mm_modules is True
    text_cfg = validate({"base_model": MODEL, "datasets": [{"path": "builtin:shapes", "type": "chat_template"}]}, manager)
    assert manager.training_method(text_cfg).name == "sft"
    assert manager.call("gym_model_class", cfg=text_cfg) is None


def test_packing_truncation_audio_and_stray_image_keys_are_refused_with_the_reason():
    data = {"datasets": [{"path": "builtin:shapes", "type": "chat_template"}]}
    problems = " ".join(problems_of({**VISION, **data, "sample_packing": True}))
    assert "sample_packing" in problems and "packed rows would mix several rows' images" in problems
    problems = " ".join(problems_of({**VISION, **data, "excess_length_strategy": "truncate"}))
    assert "excess_length_strategy" in problems and "image's tokens" in problems
    problems = " ".join(problems_of({**VISION, **data, "processor_type": "VoxtralProcessor"}))
    assert "processor_type" in problems and "audio input" in problems and "not supported" in problems
    problems = " ".join(problems_of({"base_model": MODEL, **data, "image_size": 64}))
    assert "image_size" in problems and "processor_type" in problems
    problems = " ".join(problems_of({**VISION, "datasets": [{"path": "x.jsonl", "type": "chat_template"}],
                                     "eval_shapes": 10}))
    assert "eval_shapes" in problems and "builtin:shapes" in problems


# ---------------------------------------------------------------------------------------- strategy


def test_labels_train_only_the_answer_and_the_image_becomes_its_tokens(tmp_path):
    from transformers import AutoTokenizer

    from gym.api import resolve_source

    picture(tmp_path / "pics" / "red.png", (255, 0, 0))
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    rows = [{"messages": chat(), "images": ["pics/red.png"]},  # relative to the dataset file
            {"messages": chat("How many shapes?", "2", {"type": "image", "path": str(tmp_path / "pics/red.png")})}]
    out = call_strategy("chat_template", rows, {**VISION, "datasets": [{"path": str(data)}]})
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(MODEL, "base_model"))
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for ids, labels, answer in zip(out["input_ids"], out["labels"], ["red", "2"]):
        assert ids.count(image_id) == 16  # 32x32 pixels in 8x8 patches
        trained = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
        assert tokenizer.decode(trained) == answer + "<|im_end|>"
        assert all(label == IGNORE_INDEX for t, label in zip(ids, labels) if t == image_id)
    assert out["images"][0] == [str((tmp_path / "pics" / "red.png").resolve())]
    assert len(out["images"][1]) == 1


def test_bad_rows_are_named(tmp_path):
    picture(tmp_path / "a.png", (0, 255, 0))
    config = {**VISION, "datasets": [{"path": str(tmp_path / "none.jsonl")}]}
    with pytest.raises(RowError, match=r"image file not found: nowhere\.png"):
        call_strategy("chat_template", [{"messages": chat(), "images": ["nowhere.png"]}], config)
    (tmp_path / "broken.png").write_text("not a picture")
    with pytest.raises(RowError, match=r"cannot read the image .*broken\.png"):
        call_strategy("chat_template", [{"messages": chat(), "images": [str(tmp_path / "broken.png")]}], config)
    two_parts = chat()
    two_parts[0]["content"].insert(0, {"type": "image"})
    with pytest.raises(RowError, match=r"only 1 image\(s\) for more image parts"):
        call_strategy("chat_template", [{"messages": two_parts, "images": [str(tmp_path / "a.png")]}], config)
    with pytest.raises(RowError, match=r"holds 2 image\(s\) but its messages have only 1"):
        call_strategy("chat_template", [{"messages": chat(), "images": [str(tmp_path / "a.png")] * 2}], config)
    text_only = {"base_model": "builtin:tiny-llama-micro", "processor_type": "AutoProcessor",
                 "datasets": [{"path": str(tmp_path / "none.jsonl")}]}
    with pytest.raises(RowError, match=r"has no image processor: this is a text-only model"):
        call_strategy("chat_template", [{"messages": chat(), "images": [str(tmp_path / "a.png")]}], text_only)


def test_a_missing_image_names_the_dataset_file_and_row(tmp_path):
    from gym.api import prepare_data

    picture(tmp_path / "ok.png", (0, 0, 255))
    data = tmp_path / "pictures.jsonl"
    data.write_text(json.dumps({"messages": chat(), "images": ["ok.png"]}) + "\n"
                    + json.dumps({"messages": chat(), "images": ["gone.png"]}) + "\n")
    cfg = validate({**VISION, "datasets": [{"path": str(data), "type": "chat_template"}],
                    "dataset_prepared_path": str(tmp_path / "prepared"), "sequence_len": 64})
    with pytest.raises(DataError) as caught:
        prepare_data(cfg)
    message = str(caught.value)
    assert str(data) in message and "row 1 (line 2)" in message and "image file not found: gone.png" in message


# ---------------------------------------------------------------------------------- model and collator


def test_the_rows_image_reaches_the_model(tmp_path):
    import torch

    from gym.api import build_model, load_tokenizer
    from gym.plugins.vision_data import VisionChatStrategy, VisionCollator

    red, blue = picture(tmp_path / "red.png", (255, 0, 0)), picture(tmp_path / "blue.png", (0, 0, 255))
    cfg = validate({**VISION, "datasets": [{"path": str(tmp_path / "x.jsonl"), "type": "chat_template"}]})
    tokenizer = load_tokenizer(cfg)
    strategy = VisionChatStrategy(tokenizer, cfg, cfg.datasets[0])
    collator = VisionCollator(cfg, tokenizer)
    model = build_model(cfg, tokenizer, wrap=False).eval()
    losses = []
    for image in (red, blue, red):
        out = strategy.process_batch({"messages": [chat()], "images": [[str(image)]]})
        batch = collator([{key: out[key][0] for key in out}])
        assert batch["pixel_values"].shape == (1, 3, 32, 32)
        with torch.no_grad():
            losses.append(model(**batch).loss.item())
    assert losses[0] == pytest.approx(losses[2])
    assert abs(losses[0] - losses[1]) > 1e-4


# ------------------------------------------------------------------------------------------ training


def shapes_run(tmp_path, **keys):
    config = {**VISION, "datasets": [{"path": "builtin:shapes?rows=64&seed=3", "type": "chat_template"}],
              "sequence_len": 64, "micro_batch_size": 8, "learning_rate": 5e-3, "warmup_steps": 0,
              "dataset_prepared_path": str(tmp_path / "prepared"), **keys}
    return run_config(config, steps=6, tmp_path=tmp_path)


def answer_with(processor, model, picture_path: Path) -> str:
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.open(picture_path).convert("RGB")], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return processor.decode(generated[0, inputs["input_ids"].shape[1]:])


@pytest.mark.slow
def test_full_fine_tuning_trains_the_language_model_and_keeps_the_vision_encoder(tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gym.api import resolve_source

    result = shapes_run(tmp_path)
    assert result.method == "vision"
    assert result.final_loss < result.first_loss
    base = AutoModelForImageTextToText.from_pretrained(resolve_source(MODEL, "base_model"))
    processor = AutoProcessor.from_pretrained(result.output_dir)
    trained = AutoModelForImageTextToText.from_pretrained(result.output_dir)
    before, after = base.state_dict(), trained.state_dict()
    vision = [k for k in before if ".vision_tower." in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert not torch.equal(before["model.multi_modal_projector.linear_1.weight"],
                           after["model.multi_modal_projector.linear_1.weight"])
    assert answer_with(processor, trained, picture(tmp_path / "p.png", (255, 0, 0)))


@pytest.mark.slow
def test_lora_trains_reloads_with_peft_and_merges(tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gym.api import resolve_source

    result = shapes_run(tmp_path, adapter="lora", lora_r=8, lora_alpha=16, lora_target_modules=LORA_TARGETS,
                        merge_lora=True)
    assert result.final_loss < result.first_loss
    out = Path(result.output_dir)
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert names and all("language_model" in name and "vision_tower" not in name for name in names)
    processor = AutoProcessor.from_pretrained(out)
    base = AutoModelForImageTextToText.from_pretrained(resolve_source(MODEL, "base_model"))
    adapted = PeftModel.from_pretrained(base, str(out))
    image = picture(tmp_path / "p.png", (0, 255, 0))
    answer = answer_with(processor, adapted, image)
    merged = AutoModelForImageTextToText.from_pretrained(out / "merged")
    assert answer_with(AutoProcessor.from_pretrained(out / "merged"), merged, image) == answer
    # `gym merge-lora` later, on its own, carries the processor into the merged folder too
    from gym.plugins.lora import merge_adapter

    shutil.rmtree(out / "merged")
    target = merge_adapter(validate({**VISION, "datasets": [{"path": "builtin:shapes", "type": "chat_template"}],
                                     "adapter": "lora", "lora_target_modules": LORA_TARGETS, "output_dir": str(out)}))
    assert answer_with(AutoProcessor.from_pretrained(target), AutoModelForImageTextToText.from_pretrained(target),
                       image) == answer


def test_freeze_mm_modules_keeps_adapters_in_the_vision_encoder_frozen():
    from gym.api import build_model, load_tokenizer

    def trainable(keys):
        cfg = validate({**VISION, "datasets": [{"path": "builtin:shapes", "type": "chat_template"}], **keys})
        model = build_model(cfg, load_tokenizer(cfg))
        return [name for name, p in model.named_parameters() if p.requires_grad]

    frozen = trainable({"adapter": "lora", "lora_target_linear": True})
    assert any("language_model" in name for name in frozen)
    assert not any("vision_tower" in name for name in frozen)
    unfrozen = trainable({"adapter": "lora", "lora_target_linear": True, "freeze_mm_modules": False})
    assert any("vision_tower" in name and "lora_" in name for name in unfrozen)
    full = trainable({})
    assert any("multi_modal_projector" in name for name in full) and not any("vision_tower" in name for name in full)


def test_llava_instruct_mix_parquet_with_image_cells_prepares(tmp_path):
    """The hub layout: a parquet file whose `images` column holds datasets Image cells (decoded to PIL on reading)."""
    import datasets

    from gym.api import prepare_data

    paths = [str(picture(tmp_path / f"{i}.png", colour)) for i, colour in enumerate([(255, 0, 0), (0, 0, 255)])]
    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    features = datasets.Features({"messages": [{"role": datasets.Value("string"), "content": [part]}],
                                 "images": datasets.Sequence(datasets.Image())})
    rows = datasets.Dataset.from_dict({"messages": [chat(answer="red"), chat(answer="blue")],
                                       "images": [[paths[0]], [paths[1]]]}, features=features)
    rows.to_parquet(str(tmp_path / "mix.parquet"))
    cfg = validate({**VISION, "datasets": [{"path": str(tmp_path / "mix.parquet"), "type": "chat_template"}],
                    "dataset_prepared_path": str(tmp_path / "prepared"), "sequence_len": 64})
    train = prepare_data(cfg).train
    assert len(train) == 2 and all(row["images"][0].startswith("data:image") for row in train)
    from gym.plugins.vision_data import load_rgb

    colours = {load_rgb(row["images"][0], None, "bilinear").getpixel((5, 5)) for row in train}
    assert colours == {(255, 0, 0), (0, 0, 255)}
