"""Compression Studio's Qt layer: it calls `core`, never the other way round."""
