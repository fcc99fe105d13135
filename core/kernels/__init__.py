"""Sparse kernels and their benchmark: what PyTorch's 2:4 kernels accept, semi-structured weights from
compact storage, and the measurement of dense against 2:4 for a model's shapes and end to end."""
