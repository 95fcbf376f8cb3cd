"""Training shared by the experiment folders: the LLM and CLIP trainers and what they share (command line,
run directories and checkpoints, the run protocol: lock, preemption, divergence guard, best checkpoint;
optimizers and schedules, precision, metrics logging)."""
