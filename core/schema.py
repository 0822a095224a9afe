"""The core's own config keys: model, data, lengths, training loop, outputs.

Plugins add their keys through the ``gym_config_schema`` hook; :mod:`gym.config` composes the two.
Keys follow the names users know from Axolotl.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

Auto = Literal["auto"]


class StrictConfig(BaseModel):
    """Base of every config model, the core's and each plugin's fragment: unknown keys are errors."""

    # defer_build: only the composed model is ever validated against, so building each part is wasted start-up.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), defer_build=True, allow_inf_nan=False)


class DatasetConfig(StrictConfig):
    """One entry of ``datasets:`` / ``test_datasets:``.

    Strategy-specific keys (``field_messages`` ...) are added by the strategies that accept them when
    the config model is composed.
    """

    path: str = Field(..., description="Local file or folder (json, jsonl, csv, parquet, arrow) or a hub dataset id.")
    type: Any = Field(
        ...,
        description="Dataset type: a strategy name (`gym plugins list` shows them), or a mapping read by the "
        "strategy that takes inline formats.",
    )
    split: str = Field("train", description="Split to read.")
    data_files: Union[str, list[str], None] = Field(None, description="Files to read inside `path`.")
    name: str | None = Field(None, description="Dataset configuration name (for hub datasets).")
    ds_type: Literal["json", "csv", "parquet", "arrow", "text"] | None = Field(
        None, description="File format, when the extension does not tell."
    )
    revision: str | None = Field(None, description="Hub revision.")
    shards: int | None = Field(None, ge=1, description="Keep one shard of this many.")
    shards_idx: int | None = Field(None, ge=0, description="Which shard to keep (with `shards`).")
    train_on_inputs: bool | None = Field(None, description="Override the top-level train_on_inputs for this dataset.")
    trust_remote_code: bool = Field(False, description="Allow the dataset's own loading script.")


PrecisionFlag = Union[bool, Auto, None]


class CoreConfig(StrictConfig):
    """Keys the core understands. See docs/configuration.md (generated from this schema)."""

    # Where the config was read from (not a key): plugins resolve the config's relative files against its folder.
    _source_path: str | None = PrivateAttr(default=None)

    # --- model and tokenizer ---------------------------------------------------------------------
    base_model: str = Field(..., description="Local folder or hub id of the model to fine-tune.")
    base_model_config: str | None = Field(None, description="Where to read the model config, if not `base_model`.")
    revision_of_model: str | None = Field(None, description="Hub revision of the base model.")
    model_type: str | None = Field(
        None, description="Auto class used to load the model, for example AutoModelForCausalLM."
    )
    tokenizer_config: str | None = Field(None, description="Where to read the tokenizer, if not `base_model`.")
    tokenizer_type: str | None = Field(None, description="Tokenizer class, for example AutoTokenizer.")
    tokenizer_use_fast: bool = Field(True, description="Use the fast (Rust) tokenizer.")
    trust_remote_code: bool = Field(False, description="Run the model repository's own code.")
    special_tokens: dict[str, str] | None = Field(
        None, description="Special tokens to set, e.g. {pad_token: '<|pad|>'}; new ones are added."
    )
    tokens: list[str] | None = Field(None, description="New tokens to add to the vocabulary.")
    chat_template: str | None = Field(
        None,
        description="Chat template: `tokenizer_default`, a named one (chatml, llama3, ...) or `jinja` "
        "with `chat_template_jinja`.",
    )
    chat_template_jinja: str | None = Field(None, description="Jinja source used when chat_template is `jinja`.")
    attn_implementation: str | None = Field(
        None, description="Attention implementation: sdpa (default), eager, flash_attention_2, ..."
    )
    resize_token_embeddings_to_32x: bool = Field(False, description="Round the embedding size up to a multiple of 32.")
    model_config_overrides: dict[str, Any] | None = Field(
        None, description="Values that replace the model config's before loading (e.g. rope scaling)."
    )
    low_cpu_mem_usage: bool | None = Field(
        None, description="Passed to from_pretrained: load the weights without a first random initialisation."
    )
    device_map: Union[str, dict[str, Any], None] = Field(None, description="Passed to from_pretrained.")

    # --- data --------------------------------------------------------------------------------------
    datasets: list[DatasetConfig] = Field(..., min_length=1, description="Training datasets, mixed together.")
    test_datasets: list[DatasetConfig] | None = Field(None, description="Evaluation datasets (instead of a split).")
    val_set_size: float = Field(
        0.0, ge=0, description="Held-out part of the training data: a fraction (< 1) or a row count (>= 1)."
    )
    shuffle_merged_datasets: bool = Field(True, description="Shuffle the mixed datasets with `seed`.")
    dataset_prepared_path: str | None = Field(
        None, description="Folder for the prepared-data cache; unset keeps no cache."
    )
    dataset_processes: int | None = Field(None, ge=1, description="Worker processes for tokenizing.")
    skip_prepare_dataset: bool | None = Field(
        None, description="Accepted for compatibility and has no effect: gym always prepares and caches the text "
        "(a note says so)."
    )
    sequence_len: int = Field(2048, ge=8, description="Maximum tokens per sample (the training method may use it for its rows too).")
    excess_length_strategy: Literal["drop", "truncate"] = Field(
        "drop", description="What to do with samples longer than `sequence_len`; both are counted."
    )
    train_on_inputs: bool = Field(False, description="Also compute loss on prompts / user turns.")
    remove_unused_columns: bool | None = Field(
        None, description="Accepted for compatibility and has no effect: the training method decides which columns "
        "its trainer reads (a note says so)."
    )

    # --- training loop ---------------------------------------------------------------------------
    output_dir: str = Field("./outputs/gym-run", description="Where checkpoints and the final model go.")
    overwrite_output_dir: bool = Field(
        False,
        description="Allow output_dir to be a folder that holds files gym did not write (they may be replaced). "
        "A previous gym run's folder is always allowed (a note says it is written over).",
    )
    micro_batch_size: int = Field(1, ge=1, description="Rows per device per step.")
    eval_batch_size: int | None = Field(None, ge=1, description="Rows per device per evaluation step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    num_epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, description="Stop after this many optimizer steps (overrides num_epochs).")
    optimizer: str = Field(
        "adamw_torch",
        description="adamw_torch, adamw_torch_fused, adamw_8bit / adamw_bnb_8bit, adafactor, sgd, ... "
        "(any transformers OptimizerNames value).",
    )
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="linear, cosine, constant, constant_with_warmup, ...")
    lr_scheduler_kwargs: dict[str, Any] | None = Field(None, description="Extra arguments for the scheduler.")
    cosine_min_lr_ratio: float | None = Field(None, ge=0, le=1, description="Cosine floor as a fraction of the peak.")
    warmup_ratio: float | None = Field(None, ge=0, le=1, description="Warm-up as a fraction of all steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up steps (instead of warmup_ratio).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float | None = Field(None, description="AdamW beta1.")
    adam_beta2: float | None = Field(None, description="AdamW beta2.")
    adam_epsilon: float | None = Field(None, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm.")
    bf16: PrecisionFlag = Field("auto", description="Train in bfloat16: true, false or auto (where the hardware has it).")
    fp16: PrecisionFlag = Field(None, description="Train in float16 (mixed precision): true, false or auto.")
    tf32: PrecisionFlag = Field(None, description="Allow TF32 matmuls on Ampere+ GPUs: true, false or auto.")
    float16: bool | None = Field(None, description="Load the model weights in float16.")
    bfloat16: bool | None = Field(None, description="Load the model weights in bfloat16.")
    torch_dtype: str | None = Field(None, description="dtype for the loaded weights (float32, bfloat16, float16).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory."
    )
    gradient_checkpointing_kwargs: dict[str, Any] | None = Field(
        None, description="e.g. {use_reentrant: false}."
    )
    seed: int = Field(42, description="Seed for shuffling, splitting and initialisation.")
    logging_steps: int | None = Field(None, ge=1, description="Log every N steps (default: about 20 times a run).")
    saves_per_epoch: int | None = Field(None, ge=0, description="Checkpoints per epoch.")
    save_steps: Union[int, float, None] = Field(None, description="Checkpoint every N steps (or a fraction).")
    save_strategy: Literal["steps", "epoch", "no", "best"] | None = Field(None, description="When to checkpoint.")
    save_total_limit: int | None = Field(None, ge=1, description="Keep at most this many checkpoints.")
    save_only_model: bool = Field(False, description="Checkpoints without optimizer state (cannot resume).")
    save_safetensors: bool = Field(True, description="Write weights as safetensors.")
    save_first_step: bool = Field(False, description="Also checkpoint after the first step.")
    evals_per_epoch: int | None = Field(None, ge=0, description="Evaluations per epoch.")
    eval_steps: Union[int, float, None] = Field(None, description="Evaluate every N steps (or a fraction).")
    eval_strategy: Literal["steps", "epoch", "no"] | None = Field(None, description="When to evaluate.")
    resume_from_checkpoint: str | None = Field(None, description="Checkpoint folder to resume from.")
    auto_resume_from_checkpoints: bool = Field(
        False, description="Resume from the newest checkpoint in output_dir when there is one."
    )
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after N evaluations without improvement.")
    dataloader_num_workers: int | None = Field(None, ge=0, description="Data loader worker processes.")
    dataloader_pin_memory: bool | None = Field(None, description="Pin data loader memory.")
    ddp_timeout: int | None = Field(None, description="Seconds before a distributed collective times out.")
    local_rank: int | None = Field(
        None, description="Set by launchers as an environment variable, not in the config; has no effect here (a note "
        "says so)."
    )
    torch_compile: Union[bool, Auto, None] = Field(None, description="Compile the model with torch.compile.")
    use_cpu: bool = Field(False, description="Train on the CPU even when a GPU is present.")
    strict: bool = Field(
        False, description="Accepted for compatibility and has no effect: gym always validates strictly (a note says so)."
    )
    debug: bool = Field(False, description="Print a few tokenized samples with their labels before training.")
    hub_model_id: str | None = Field(None, description="Push the final model to this hub repository.")
    hub_strategy: str | None = Field(None, description="When to push (end, every_save, checkpoint).")
    plugins: list[str] | None = Field(
        None,
        description="Plugins this config needs (gym entry-point names, or Axolotl-style import paths whose "
        "last part is checked against installed gym plugins).",
    )

    @field_validator("special_tokens", mode="before")
    @classmethod
    def _empty_mapping(cls, value: Any) -> Any:
        return value or None

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing_variants(cls, value: Any) -> Any:
        if value in ("offload", "unsloth"):
            raise ValueError(f"{value!r} (activation offloading) is not supported by gym yet; write true or false")
        return value

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens_is_a_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError("a list of new tokens; pad/bos/eos/unk tokens go under special_tokens")
        return value
