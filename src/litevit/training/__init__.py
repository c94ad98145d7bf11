"""Training and fine-tuning: the story in :mod:`.train`, its configuration, data, losses, optimizer and checkpoints."""
