"""The pruning loop: a validated plan, the sequential block loop fed by a block source, the statistics
it gathers, the calibration activations between blocks, the dense weights kept to undo a run, mask
selection, and the methods (`methods/`)."""
