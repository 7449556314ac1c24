"""Learning from the registry's own labelled photos: metric-learning fine-tuning of the global embedder
(`trainer`) and the trained versions' files (`checkpoints`)."""
