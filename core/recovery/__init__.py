"""Recovery: training the kept weights of a pruned model back towards the dense model, mask fixed."""
