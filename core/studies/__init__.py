"""Jobs made of many pruning runs on one model: sensitivity profiles and sparsity sweeps."""
