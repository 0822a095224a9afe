"""The flash_attention plugin (placeholder: being built)."""
