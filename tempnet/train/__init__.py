"""Training shared by the experiment folders: the LLM and CLIP trainers and what they share (command line,
run directories and checkpoints, optimizers and schedules, precision, metrics logging)."""
