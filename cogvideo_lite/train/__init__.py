"""Training any stage through DeepSpeed (`train.py`): typed run configs, the task of each stage, the sample stream,
the DeepSpeed engine, run directories with atomic checkpoints, and rank handling."""
