"""What the studio shows of a model and its runs, reduced where the tensors live: display summaries,
layer views and tiles, and the comparison of two runs' masks."""
