"""Quantization of linear weights: the integer grids, GPTQ and round-to-nearest, and what a quantized layer stores."""
