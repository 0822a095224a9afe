"""A vision family other than Llava: a tiny Gemma 3 (SigLIP encoder, soft image tokens between begin / end of
image, bidirectional attention inside an image) built from its config, trained with the keys of Axolotl's
gemma3 vision example on local pictures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gym.api import IGNORE_INDEX

GEMMA_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_gemma3(folder: Path) -> Path:
    """A random 2-layer Gemma 3 with a 2-layer SigLIP encoder (32x32 pictures, 4 soft tokens) and its processor."""
    import torch
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from gym.api import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source("builtin:tiny-llama", "base_model"))
    tokenizer.add_special_tokens({"extra_special_tokens": [
        "<|im_start|>", "<|im_end|>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]})
    tokenizer.add_tokens(["<start_of_turn>", "<end_of_turn>"], special_tokens=True)
    tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"  # Gemma's processor reads these names off the tokenizer
    settings = json.loads(config_file.read_text())
    settings["extra_special_tokens"] = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                        "image_token": "<image_soft_token>"}
    config_file.write_text(json.dumps(settings))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = GEMMA_TEMPLATE
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, chat_template=GEMMA_TEMPLATE, image_seq_length=4)
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         sliding_window=64),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        mm_tokens_per_image=4, image_token_index=ids("<image_soft_token>"), boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def local_shapes(folder: Path, rows: int) -> Path:
    """builtin:shapes rows in the llava-instruct-mix layout, pictures as PNG files named relative to the data file."""
    from gym.plugins.vision_builtins import shapes_rows

    (folder / "images").mkdir(parents=True)
    with open(folder / "shapes.jsonl", "w") as handle:
        for i, row in enumerate(shapes_rows(rows, 5)):
            (folder / f"images/{i}.png").write_bytes(base64.b64decode(row["images"][0].split(",", 1)[1]))
            handle.write(json.dumps({"messages": row["messages"], "images": [f"images/{i}.png"]}) + "\n")
    return folder / "shapes.jsonl"


@pytest.mark.slow
def test_a_tiny_gemma3_trains_with_axolotls_gemma3_vision_keys(tmp_path):
    import datasets
    from transformers import AutoProcessor

    from gym.testing import run_config

    model = tiny_gemma3(tmp_path / "tiny-gemma3")
    data = local_shapes(tmp_path / "data", 48)
    config = {  # the keys of examples/gemma3/gemma-3-4b-vision-qlora.yml, at tiny sizes on a CPU
        "base_model": str(model), "processor_type": "AutoProcessor", "remove_unused_columns": False,
        "sample_packing": False, "chat_template": "gemma3",
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "lora_target_modules": r"model.language_model.layers.[\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj",
        "gradient_checkpointing": True, "sequence_len": 64, "micro_batch_size": 4, "learning_rate": 1e-2,
        "dataset_prepared_path": str(tmp_path / "prepared"),
    }
    result = run_config(config, steps=5, tmp_path=tmp_path)
    assert result.method == "vision" and result.final_loss < result.first_loss

    prepared = datasets.load_from_disk(str(next((tmp_path / "prepared").glob("*/train"))))
    processor = AutoProcessor.from_pretrained(result.output_dir)
    row = prepared[0]
    text = processor.tokenizer.decode(row["input_ids"])
    assert text.count("<image_soft_token>") == 4 and "<start_of_image>" in text and "<end_of_image>" in text
    trained = processor.tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])
    assert trained.endswith("<end_of_turn>") and trained.removesuffix("<end_of_turn>") in {
        "red", "green", "blue", "yellow", "1", "2", "3"}
    assert Path(row["images"][0]).is_file()
