"""Bimodal-CL: CLIP with TempNet and its baselines on CC3M, zero-shot evaluation (Qiu et al., ICML 2024, CLIP table).

    python Bimodal-CL/train.py --config Bimodal-CL/configs/debug.yaml --output-dir runs/bimodal_debug loss=isogclr_tempnet
    python Bimodal-CL/train.py --config ... --output-dir DIR --resume | --overwrite
    python Bimodal-CL/train.py --config ... --output-dir DIR --evaluate --checkpoint DIR/checkpoint-N

Every setting lives in configs/*.yaml; scripts/*.sh launch them. All training logic is the shared
trainer, tempnet/train/clip_trainer.py.
"""

from tempnet.train.clip_trainer import cli, main as _main


def main(argv=None) -> dict | None:
    return _main(argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    cli(description=__doc__.splitlines()[0])
