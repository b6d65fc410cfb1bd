"""Pretraining on Ray Train: optimizer, schedule, data cursor, checkpoints, the loop and the trainer."""
