"""Turning datasets into training rows: loading, tokenizing, lengths, packing, caching."""
