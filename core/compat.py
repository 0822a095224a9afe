"""Keys that users of other fine-tuning tools write but gym does not take as they are.

- ``RENAMED``: gym supports the feature under another key; the error says what to write instead.
- ``UNSUPPORTED``: a documented Axolotl key whose feature gym does not have yet. Setting it is an error
  saying so; leaving it empty (``wandb_project:``, ``flash_attention: false``) asks for nothing, so the
  key is removed and reported as a note rather than silently ignored.

A key that a loaded plugin declares is never looked up here: installing a plugin that supports a
feature turns its "not supported" error into a validated key.
"""

from __future__ import annotations

from typing import Any

RENAMED: dict[str, str] = {
    "max_packed_sequence_len": "use `sequence_len` with `sample_packing: true`",
    "evaluation_strategy": "write `eval_strategy`",
    "eval_table_size": "removed; gym logs no prediction tables",
    "lora_model_dir_or_id": "write `lora_model_dir`",
    "batch_size": "write `micro_batch_size` (per device) and `gradient_accumulation_steps`",
    "noisy_embedding_alpha": "write `neftune_noise_alpha`",
    "dpo_beta": "write `rl_beta`",
    "context_parapllel_size": "misspelled: `context_parallel_size` (not supported by gym yet either)",
}

RENAMED_DATASET_KEYS: dict[str, str] = {
    "message_field_role": "write `message_property_mappings: {role: <field>}`",
    "message_field_content": "write `message_property_mappings: {content: <field>}`",
    "conversation": "write `chat_template: <name>` on the dataset or at the top level",
}

# key -> the feature it belongs to, as the error names it.
_FEATURES: dict[str, tuple[str, ...]] = {
    "multi-GPU sharding (FSDP)": (
        "fsdp", "fsdp_config", "fsdp_version", "fsdp_final_state_dict_type", "dp_shard_size",
        "dp_replicate_size", "tensor_parallel_size", "context_parallel_size", "expert_parallel_size",
        "sequence_parallel_degree", "heads_k_stride", "ring_attn_func",
    ),
    "DeepSpeed": ("deepspeed",),
    "preference and RL training (rl: dpo/kto/orpo/grpo)": (
        "rl", "rl_beta", "trl", "dpo_use_weighting", "dpo_label_smoothing", "orpo_alpha", "kto_desirable_weight",
        "kto_undesirable_weight", "reward_model", "process_reward_model", "num_labels", "center_rewards_coefficient",
        "simpo_gamma", "cpo_alpha", "ebft", "gdpo",
    ),
    "trackers (wandb, mlflow, comet, swanlab, trackio)": (
        "wandb_project", "wandb_entity", "wandb_watch", "wandb_name", "wandb_run_id", "wandb_log_model", "wandb_mode",
        "mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name", "hf_mlflow_log_artifacts",
        "use_comet", "comet_project_name", "comet_api_key", "comet_workspace", "comet_mode",
        "use_tensorboard", "use_swanlab", "swanlab_project", "swanlab_experiment_name", "swanlab_description",
        "swanlab_mode", "swanlab_workspace", "swanlab_log_completions", "swanlab_completion_log_interval",
        "swanlab_completion_max_buffer", "swanlab_log_model", "trackio_project_name", "trackio_run_name",
        "trackio_space_id",
    ),
    "Liger kernels": (
        "liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_rope", "liger_cross_entropy",
        "liger_fused_linear_cross_entropy", "liger_rms_norm_gated", "liger_swiglu",
    ),
    "Cut Cross Entropy": ("cut_cross_entropy",),
    "LoRA kernels and other custom kernels": (
        "lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "use_kernels", "use_scattermoe", "use_sonicmoe",
        "use_dsv4_kernels", "dsv4_fp4_grouped_mode", "flash_attn_cross_entropy", "flash_attn_rms_norm",
        "flash_attn_fuse_mlp", "flash_optimum", "tiled_mlp", "experts_implementation", "llama4_linearized_experts",
        "quantize_moe_experts", "xformers_attention", "sdp_attention", "s2_attention", "flex_attention",
        "flex_attn_compile_kwargs", "pretrain_multipack_attn", "unsloth_cross_entropy_loss", "unsloth_lora_mlp",
        "unsloth_lora_qkv", "unsloth_lora_o",
    ),
    "Spectrum / parameter freezing": ("unfrozen_parameters", "spectrum_top_fraction", "spectrum_snr_file"),
    "GPTQ, FP8, QAT and other quantization": (
        "gptq", "gptq_groupsize", "gptq_model_v1", "fp8", "fp8_enable_fsdp_float8_all_gather", "qat",
        "model_quantization_config", "model_quantization_config_kwargs", "llmcompressor", "nvfp4_merge_aware",
        "use_onebitllms", "torchao",
    ),
    "multimodal models": ("processor_type", "freeze_mm_modules", "image_size", "image_resize_algorithm"),
    "streaming and pretraining datasets": (
        "pretraining_dataset", "streaming", "streaming_multipack_buffer_size", "sample_packing_sequentially",
        "curriculum_sampling", "dataset_exact_deduplication", "push_dataset_to_hub", "dataset_keep_in_memory",
        "dataset_shard_num", "dataset_shard_idx",
    ),
    "ReLoRA and jagged restarts": (
        "relora", "relora_steps", "relora_prune_ratio", "relora_cpu_offload", "relora_warmup_steps",
        "jagged_restart_steps", "jagged_restart_warmup_steps", "jagged_restart_anneal_steps",
    ),
    "Ray": ("use_ray", "ray_num_workers", "ray_run_name"),
    "activation offloading": ("activation_offloading",),
    "sample generation during evaluation": (
        "eval_max_new_tokens", "eval_causal_lm_metrics", "do_causal_lm_eval", "do_bench_eval", "bench_dataset",
    ),
    "mistral-common tokenizers": ("tokenizer_use_mistral_common",),
    "diffusion language models": ("diffusion",),
    "weight re-initialisation": ("reinit_weights",),
    "torchdistx": ("torchdistx_path",),
    "skipping the move to device": ("experimental_skip_move_to_device",),
    "ignore patterns for model files": ("base_model_ignore_patterns",),
    "custom accelerator config": ("accelerator_config",),
    "legacy ddp switch": ("ddp",),
    "full fine-tune flag": ("full_finetune",),
    "PEFT config passthrough": ("peft",),
    "LoRA on parameters": ("lora_target_parameters",),
    "NEFTune": ("neftune_noise_alpha",),
    "constant cosine ratio": ("cosine_constant_lr_ratio",),
    "eta_min": ("eta_min",),
    "model config passthrough": ("model_config",),
}

UNSUPPORTED: dict[str, str] = {key: feature for feature, keys in _FEATURES.items() for key in keys}

UNSUPPORTED_DATASET_KEYS: dict[str, str] = {
    "field": "reading a nested field of json files",
    "field_chosen": "preference datasets",
    "field_rejected": "preference datasets",
    "field_thinking": "reasoning traces",
    "template_thinking_key": "reasoning traces",
    "preprocess_shards": "preprocessing shards",
}


def _asks_for_nothing(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == "" or value == [] or value == {}


def check_keys(data: dict[str, Any], schema, raw, notes: list[str]) -> list:
    """Turn renamed and unsupported keys into problems (or notes when empty); edits ``data`` in place."""
    from gym.config import ConfigProblem

    problems: list[ConfigProblem] = []
    for key in list(data):
        if key in schema.key_owner:
            continue
        value = data[key]
        if key in RENAMED:
            problems.append(ConfigProblem(key, f"renamed: {RENAMED[key]}", raw.line_of(key)))
            del data[key]
        elif key in UNSUPPORTED:
            if _asks_for_nothing(value):
                notes.append(f"{key} (line {raw.line_of(key)}): empty, ignored ({UNSUPPORTED[key]} is not in gym yet)")
                del data[key]
            else:
                problems.append(
                    ConfigProblem(key, f"not supported by gym yet ({UNSUPPORTED[key]})", raw.line_of(key))
                )
                del data[key]
    for list_key in ("datasets", "test_datasets"):
        entries = data.get(list_key)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            if "type" in entry and entry["type"] is None:
                path = f"{list_key}.{i}.type"
                problems.append(
                    ConfigProblem(path, "empty: pre-tokenized datasets are not supported by gym yet; name a type", raw.line_of(path))
                )
                del entry["type"]
            for key in list(entry):
                if key in schema.dataset_key_owner:
                    continue
                path = f"{list_key}.{i}.{key}"
                if key in RENAMED_DATASET_KEYS:
                    problems.append(ConfigProblem(path, f"renamed: {RENAMED_DATASET_KEYS[key]}", raw.line_of(path)))
                    del entry[key]
                elif key in UNSUPPORTED_DATASET_KEYS:
                    if _asks_for_nothing(entry[key]):
                        notes.append(f"{path}: empty, ignored")
                        del entry[key]
                    else:
                        feature = UNSUPPORTED_DATASET_KEYS[key]
                        problems.append(ConfigProblem(path, f"not supported by gym yet ({feature})", raw.line_of(path)))
                        del entry[key]
    return problems
