"""The sft plugin (placeholder: being built)."""
