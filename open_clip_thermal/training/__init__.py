"""T-CLIP training on open_clip_train: our flags, the trainer hooks, losses and checkpoints."""
