"""Writing a model out: an ordinary Hugging Face folder, a compact 2:4 folder, an export written block by
block while a streamed model is pruned, and `sparsity.json`, the report that goes with each."""
