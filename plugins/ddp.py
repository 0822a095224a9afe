"""DDP: the engine of a run on several processes unless another (DeepSpeed, FSDP) is chosen.

Each process holds the whole model and trains on its share of every global batch; gradients are averaged
across processes (NCCL on GPUs, gloo on CPUs) by ``torch.nn.parallel.DistributedDataParallel``, which the
trainer applies when the run has several processes. Its tuning keys::

    ddp_find_unused_parameters: false   # default false here (transformers would turn it on without checkpointing)
    ddp_bucket_cap_mb: 25
    ddp_broadcast_buffers: false
"""

from __future__ import annotations

from gym.api import Field, StrictConfig, hookimpl


class DDPConfig(StrictConfig):
    """Keys of the ddp plugin."""

    ddp_find_unused_parameters: bool | None = Field(
        None, description="Let DDP look for parameters that got no gradient in a step (needed when part of the "
        "model is skipped; costs a pass over the graph). Default false.")
    ddp_bucket_cap_mb: int | None = Field(
        None, gt=0, description="Size in MB of the buckets DDP groups gradients into before averaging them.")
    ddp_broadcast_buffers: bool | None = Field(
        None, description="Copy the model's buffers from rank 0 to the others at every forward pass.")


@hookimpl
def gym_config_schema():
    return DDPConfig


@hookimpl
def gym_training_arguments(cfg):
    values = {
        "ddp_find_unused_parameters": bool(cfg.ddp_find_unused_parameters),
        "ddp_bucket_cap_mb": cfg.ddp_bucket_cap_mb,
        "ddp_broadcast_buffers": cfg.ddp_broadcast_buffers,
    }
    return {key: value for key, value in values.items() if value is not None}
