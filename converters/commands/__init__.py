"""Subcommands of gato-tokenize, one module each."""
