"""Measuring quality: perplexity over non-overlapping windows of an evaluation text."""
