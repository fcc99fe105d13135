"""The names of the files an export folder holds besides the model's own."""

REPORT = "sparsity.json"                                # what was done, how, and how well
CALIBRATION = "calibration.safetensors"                 # the exact calibration windows
INDEX = "model.safetensors.index.json"                  # transformers' shard index
COMPACT_INDEX = "model.compact.safetensors.index.json"  # the same index in a compact 2:4 folder
