"""tokenizer_kit."""
