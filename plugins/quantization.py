"""The quantization plugin (placeholder: being built)."""
