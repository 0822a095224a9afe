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
    "dataset_num_proc": "write `dataset_processes`",
    "eager_attention": "write `attn_implementation: eager`",
    "rope_scaling": "write `model_config_overrides: {rope_scaling: ...}`",
    "float32": "write `torch_dtype: float32` (and leave bf16 / fp16 unset)",
    "device": "write `device_map` (or `use_cpu: true`)",
    "hf_use_auth_token": "removed; gym uses your Hugging Face login (HF_TOKEN or `hf auth login`)",
    "is_llama_derived_model": "removed; gym reads the architecture from the model's config",
    "is_mistral_derived_model": "removed; gym reads the architecture from the model's config",
    "is_falcon_derived_model": "removed; gym reads the architecture from the model's config",
    "is_qwen_derived_model": "removed; gym reads the architecture from the model's config",
}

RENAMED_DATASET_KEYS: dict[str, str] = {
    "message_field_role": "write `message_property_mappings: {role: <field>}`",
    "message_field_content": "write `message_property_mappings: {content: <field>}`",
    "conversation": "write `chat_template: <name>` on the dataset or at the top level",
    **dict.fromkeys(
        ("field_instruction", "field_input", "field_output", "format", "no_input_format", "system_prompt",
         "system_format"),
        "write it inside the dataset's `type:` mapping (`type: {field_instruction: ..., format: ...}`)",
    ),
}

# key -> the feature it belongs to, as the error names it.
_FEATURES: dict[str, tuple[str, ...]] = {
    "tensor, context, expert and sequence parallelism (N-D parallelism)": (
        "dp_shard_size", "dp_replicate_size",
        "tensor_parallel_size", "context_parallel_size", "expert_parallel_size", "sequence_parallel_degree",
        "heads_k_stride", "ring_attn_func", "expert_parallel_backend", "expert_parallel_num_nvl_bytes",
        "expert_parallel_num_rdma_bytes", "expert_parallel_token_capacity", "expert_parallel_fallback_on_unsupported",
        "qlora_sharded_model_loading", "world_size",
    ),
    "preference and RL training (rl: dpo/kto/orpo/grpo)": ("process_reward_model", "ebft", "gdpo"),
    "OpenTelemetry metrics": ("use_otel_metrics", "otel_metrics_host", "otel_metrics_port"),
    "LoRA kernels and other custom kernels": (
        "use_kernels", "use_scattermoe", "use_sonicmoe", "use_dsv4_kernels", "dsv4_fp4_grouped_mode", "flash_optimum",
        "tiled_mlp", "experts_implementation", "llama4_linearized_experts", "quantize_moe_experts", "s2_attention",
        "flex_attn_compile_kwargs", "pretrain_multipack_attn", "unsloth_cross_entropy_loss", "unsloth_lora_mlp",
        "unsloth_lora_qkv", "unsloth_lora_o", "lora_embedding_kernel", "tiled_mlp_num_shards",
        "tiled_mlp_use_original_mlp", "expert_backend", "nonexpert_quantization", "moe_bnb_fast",
        "moe_dequant_chunk_size", "moe_grouped_backend", "dsv4_bf16_all", "dsv4_fp8_lora_kernel",
        "dsv4_fp8_nonexpert_mode", "dsv4_shared_mlp_lora_kernel", "gemma4_fp8_nonexpert", "gemma4_nf4_nonexpert",
        "use_glm_dsa_kernels", "dense_mixer", "chunked_cross_entropy", "chunked_cross_entropy_num_chunks",
    ),
    "other attention implementations and attention tweaks": (
        "sage_attention", "sdpa_varlen", "flash_attn_d512", "fused_attn_kernel", "large_head_attention",
        "gemma4_hybrid_attn_impl", "scaling_softmax", "scaling_softmax_factor", "scaling_softmax_bias",
    ),
    "Spectrum / parameter freezing": ("spectrum_top_fraction", "spectrum_snr_file", "spectrum_model_name"),
    "GPTQ, FP8, QAT and other quantization": (
        "gptq", "gptq_groupsize", "gptq_model_v1", "fp8", "fp8_enable_fsdp_float8_all_gather", "qat",
        "model_quantization_config", "model_quantization_config_kwargs", "llmcompressor", "nvfp4_merge_aware",
        "use_onebitllms", "torchao", "quantization", "nvfp4_merge_aware_start_step",
    ),
    "per-role boundary markers for multimodal label masking": ("role_boundaries",),
    "streaming and pretraining datasets": (
        "pretraining_dataset", "streaming", "streaming_multipack_buffer_size", "sample_packing_sequentially",
        "curriculum_sampling", "dataset_exact_deduplication", "push_dataset_to_hub", "dataset_keep_in_memory",
        "dataset_shard_num", "dataset_shard_idx", "preprocess_iterable", "pretraining_sample_concatenation",
        "pretrain_multipack_buffer_size", "num_dataset_shards_to_save",
    ),
    "multipack sampler tuning": (
        "multipack_real_batches", "sample_packing_bin_size", "sample_packing_eff_est", "sample_packing_group_size",
        "sample_packing_mp_start_method",
    ),
    "ReLoRA and jagged restarts": (
        "relora", "relora_steps", "relora_prune_ratio", "relora_cpu_offload", "relora_warmup_steps",
        "jagged_restart_steps", "jagged_restart_warmup_steps", "jagged_restart_anneal_steps", "relora_prune_method",
    ),
    "Ray": ("use_ray", "ray_num_workers", "ray_run_name", "resources_per_worker"),
    "activation and layer offloading": ("layer_offloading",),
    "selective activation checkpointing": ("selective_checkpointing",),
    "sample generation during evaluation": (
        "eval_max_new_tokens", "eval_causal_lm_metrics", "do_causal_lm_eval", "do_bench_eval", "bench_dataset",
        "bench_split", "generate_samples", "num_generation_samples", "generation_max_new_tokens",
        "generation_temperature", "generation_top_k", "generation_top_p", "generation_do_sample",
        "generation_prompt_ratio",
    ),
    "lm-eval benchmarks": ("lm_eval_model",),
    "separate evaluation sequence length": ("eval_sequence_len",),
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
    "further DPO options": ("dpo_generate_during_eval", "dpo_use_liger_kernel", "dpo_use_logits_to_keep"),
    "prompt length limit for preference training": ("max_prompt_len",),
    "knowledge distillation": (
        "kd_trainer", "kd_ce_alpha", "kd_alpha", "kd_temperature", "kd_beta", "kd_normalize_topk",
        "kd_online_server_base_url", "kd_online_topk", "kd_online_server", "kd_online_timeout", "kd_temperature_min",
    ),
    "NeMo Gym environments": (
        "nemo_gym_enabled", "nemo_gym_dir", "nemo_gym_auto_clone", "nemo_gym_auto_start", "nemo_gym_config_paths",
        "nemo_gym_datasets", "nemo_gym_head_port", "nemo_gym_max_turns", "nemo_gym_model_name", "nemo_gym_multi_turn",
        "nemo_gym_run_timeout", "nemo_gym_server_timeout", "nemo_gym_verify_timeout",
    ),
    "LoRA+ learning rates": ("loraplus_lr_ratio", "loraplus_lr_embedding"),
    "per-module learning rates": ("embedding_lr", "embedding_lr_scale", "lr_groups"),
    "further learning-rate schedule options": ("lr_div_factor", "lr_quadratic_warmup"),
    "optimizer arguments": ("optim_args", "optim_target_modules"),
    "CAME optimizer parameters": ("adam_beta3", "adam_epsilon2"),
    "Dion optimizer": ("dion_lr", "dion_momentum", "dion_rank_fraction", "dion_rank_multiple_of"),
    "Q-GaLore optimizer": (
        "qgalore_rank", "qgalore_update_proj_gap", "qgalore_scale", "qgalore_proj_type", "qgalore_proj_quant",
        "qgalore_proj_bits", "qgalore_proj_group_size", "qgalore_cos_threshold", "qgalore_gamma_proj",
        "qgalore_queue_size",
    ),
    "Grokfast": ("grokfast_alpha", "grokfast_lamb"),
    "EAFT loss": ("use_eaft", "eaft_alpha", "eaft_k"),
    "LISA": ("lisa_n_layers", "lisa_step_interval", "lisa_layers_attribute"),
    "PoSE context extension": ("use_pose", "pose_max_context_len", "pose_num_chunks", "pose_split_on_token_ids"),
    "MoRA": ("mora",),
    "Hatchery": ("hatchery",),
    "Gradio": (
        "gradio_title", "gradio_share", "gradio_server_name", "gradio_server_port", "gradio_max_new_tokens",
        "gradio_temperature",
    ),
    "further PEFT options": (
        "peft_init_lora_weights", "peft_layers_pattern", "peft_layer_replication", "peft_trainable_token_indices",
        "peft_autocast_adapter_dtype", "peft_ensure_weight_tying", "lora_alpha_pattern", "lora_rank_pattern",
    ),
    "LoRA on CPU": ("lora_on_cpu",),
    "LoRA merge methods": ("merge_method",),
    "embedding resizing options": (
        "mean_resizing_embeddings", "shrink_embeddings", "embeddings_skip_upcast", "fix_untrained_tokens",
        "added_tokens_overrides",
    ),
    "further tokenizer and chat template options": (
        "tokenizer_legacy", "tokenizer_save_jinja_files", "chat_template_kwargs", "default_system_message",
    ),
    "float32 norm layers": ("fp32_norms", "fp32_norm_classes"),
    "dataloader options": ("dataloader_drop_last", "dataloader_prefetch_factor", "pad_to_multiple_of"),
    "padding-free batch flattening": ("batch_flattening",),
    "per-device memory limits": ("gpu_memory_limit", "max_memory"),
    "automatic batch size search": ("auto_find_batch_size",),
    "periodic garbage collection and cache emptying": ("gc_steps", "gc_collect_steps", "torch_empty_cache_steps"),
    "torch profiler": ("profiler_steps", "profiler_steps_start"),
    "tokens-per-second metrics": ("include_tokens_per_second", "include_tkps"),
    "checkpoints on demand (dynamic_checkpoint)": ("dynamic_checkpoint",),
    "custom trainer classes": ("trainer_cls",),
    "reward model classification head config": ("cls_model_config",),
    "pushing to a hub revision": ("hub_revision",),
    "shuffling each dataset before merging": ("shuffle_before_merging_datasets",),
    "Axolotl's internal (computed) settings": (
        "axolotl_config_path", "capabilities", "env_capabilities", "is_preprocess", "total_num_tokens",
        "total_supervised_tokens",
    ),
}

UNSUPPORTED: dict[str, str] = {key: feature for feature, keys in _FEATURES.items() for key in keys}

UNSUPPORTED_DATASET_KEYS: dict[str, str] = {
    "field": "reading a nested field of json files",
    "field_chosen": "preference datasets",
    "field_rejected": "preference datasets",
    "field_thinking": "reasoning traces",
    "template_thinking_key": "reasoning traces",
    "preprocess_shards": "preprocessing shards",
    "split_thinking": "reasoning traces",
    "field_tools": "tool definitions in chat datasets",
    "message_field_training": "per-turn training flags",
    "message_field_training_detail": "per-turn training flags",
    "train_on_eot": "choosing which end-of-turn tokens to train",
    "field_human": "field_human / field_model prompt styles",
    "field_model": "field_human / field_model prompt styles",
    "input_format": "input formats of Axolotl's prompt styles",
    "input_transform": "input transforms (gym's `prompt` type takes `transform`)",
    "logprobs_field": "knowledge distillation",
    "temperature": "knowledge distillation",
    "step_separator": "stepwise supervised (process reward) datasets",
    "max_completion_length": "stepwise supervised (process reward) datasets",
    "train_on_last_step_only": "stepwise supervised (process reward) datasets",
    "skip": "streaming and pretraining datasets",
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
