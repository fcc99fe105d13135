"""Opening models from every source (Hugging Face folders, GGUF files, cached hub ids, the demo, compact
2:4 folders, streamed skeletons) and finding their decoder blocks and prunable layers."""
