"""Training helpers shared by the experiment folders (logging, checkpoints, LM trainer)."""
