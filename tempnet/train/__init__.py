"""Training for the experiment folders: two trainers on what they share.

Shared by both (no prefix):
  protocol.py   the run protocol: the run's frame (signals, lock, directory), resuming, config.yaml, the
                logger, the step end (guard -> log -> save -> preempt) and checkpoint writing
  engines.py    the optimizer step (OptimizerStep: unscale, clip, skip, schedule) and DDP wrapping; the LLM
                trainer's back-ends (ddp, deepspeed, accelerate)
  cli.py        the command line and exit statuses       checkpoint.py  checkpoint layout, listing, resume checks
  optim.py      parameter groups and schedules            precision.py   fp32 / fp16 / bf16
  logging.py    metrics.jsonl, TensorBoard, progress      best.py        the best checkpoint
  divergence.py the non-finite guard                      signals.py     preemption signals
  lock.py       the run directory's lock                  inputs.py      input-path checks
LLM (GPT_2, LLaMA-1, LLaMA-2; `lm_`): lm_trainer.py (LMRun: the loop), lm_config.py, lm_model.py, lm_debug.py.
CLIP (Bimodal-CL; `clip_`): clip_trainer.py (ClipRun: the step and the epochs), clip_config.py, clip_model.py,
  clip_data.py, clip_eval.py.
"""
