"""The lora plugin (placeholder: being built)."""
