"""The Bimodal-CL config tree: one dataclass per section, a docstring under each field, checks in
`__post_init__`. The paper's settings live in Bimodal-CL/configs/*.yaml, not here.

Load with `tempnet.config.load_config(BimodalConfig, yaml_path, ["loss=clip", "train.epochs=3"])`.
The `train` and `optim` fields the LLM trainer has too are defined once, in tempnet.train.run_config; other
names are the LLM trainer's where the concept is the same (`data.synthetic`, `data.format`, `tempnet.lr`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from tempnet.config import with_defaults
from tempnet.data.bad_samples import check_policy
from tempnet.errors import ConfigError
from tempnet.losses import CONTRASTIVE_LOSSES
from tempnet.modules import TempNetPair, check_tau_range
from tempnet.train import run_config
from tempnet.train.run_config import BaseOptimConfig, BaseTrainConfig

__all__ = ["LOSS_NAMES", "ImageTowerConfig", "TextTowerConfig", "ModelConfig", "DataConfig", "LossConfig",
           "ClipTempNetConfig", "OptimConfig", "TrainConfig", "RetrievalSetConfig", "ZeroShotSetConfig", "EvalConfig",
           "BimodalConfig", "RESUME_SAFE"]

LOSS_NAMES = CONTRASTIVE_LOSSES.keys()  # the names `loss` takes: a live view of the registry


@dataclass
class ImageTowerConfig:
    source: str = "timm"
    """"timm" (any timm model name) or "open_clip" (the .visual of an open_clip model)."""
    name: str = "resnet50"
    """Model name in that library."""
    pretrained: Any = True
    """timm: true loads the library's ImageNet weights (the paper starts from them); open_clip: a pretrained
    tag such as "openai", or false."""
    kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for timm.create_model / open_clip.create_model."""

    def __post_init__(self):
        if self.source not in ("timm", "open_clip"):
            raise ValueError(f"model.image.source must be 'timm' or 'open_clip', got {self.source!r}")


@dataclass
class TextTowerConfig:
    source: str = "hf"
    """"hf" (a transformers encoder) or "open_clip" (the text half of an open_clip model)."""
    name: str = "distilbert-base-uncased"
    """hf: a model name or local path, or with pretrained=false a model type such as "distilbert"; open_clip: a model name."""
    pretrained: Any = True
    """hf: load weights (true) or build from the config (false); open_clip: a pretrained tag or false."""
    config_overrides: dict = field(default_factory=dict)
    """hf: config fields (e.g. a tiny width for tests); open_clip: create_model keyword arguments."""
    tokenizer: str = ""
    """"" = the tower's own tokenizer; "open_clip" = open_clip's BPE (ships its vocabulary: works offline);
    else a transformers tokenizer name or path."""
    max_length: int = 30
    """Tokens per caption (padding / truncation), as the authors' code."""

    def __post_init__(self):
        if self.source not in ("hf", "open_clip"):
            raise ValueError(f"model.text.source must be 'hf' or 'open_clip', got {self.source!r}")
        if self.max_length < 2:
            raise ValueError(f"model.text.max_length must be >= 2, got {self.max_length}")


@dataclass
class ModelConfig:
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    """The image tower."""
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    """The text tower."""
    embed_dim: int = 256
    """Size of the shared embedding space (the linear projections' output)."""
    image_size: int = 256
    """Training and retrieval image resolution (square)."""

    def __post_init__(self):
        if self.embed_dim < 1 or self.image_size < 8:
            raise ValueError(f"need model.embed_dim >= 1 and model.image_size >= 8, got {self.embed_dim}, "
                             f"{self.image_size}")


@dataclass
class DataConfig:
    train_json: str = ""
    """Training pairs, ALBEF JSON [{"image": path, "caption": str}] (CC3M)."""
    image_root: str = ""
    """Folder that the "image" paths of train_json are relative to."""
    synthetic: bool = False
    """Generate the synthetic shapes set (tempnet.data.synthetic_image_text) into OUTPUT_DIR/synthetic_data and
    use it for training, for a retrieval set "synthetic" and a zero-shot set "synthetic" (replacing the paths)."""
    synthetic_pairs: int = 320
    """Training pairs of the synthetic set."""
    augment: bool = True
    """Random resized crop (scale 0.5-1), flip and RandAugment; false = resize only."""
    randaugment_ops: int = 2
    """RandAugment: operations per image (0 turns RandAugment off)."""
    randaugment_magnitude: int = 7
    """RandAugment: magnitude on ALBEF's 0-10 scale (the authors: 7)."""
    max_words: int = 30
    """Captions are cut to this many words before tokenising."""
    num_workers: int = 8
    """Data loader worker processes (0 = load in the training process)."""
    format: str = "json"
    """json (train_json + image_root) or webdataset (img2dataset shards: KEY.jpg|png|webp + KEY.txt)."""
    train_shards: str = ""
    """webdataset: the shards as a brace pattern, e.g. /cc12m/{00000..01242}.tar (may change on resume: a
    resume checks the shards' content, so a copy in another folder resumes)."""
    train_index: str = ""
    """webdataset: the shard index of scripts/index_shards.py; the shards (data.train_shards, else the files it
    lists) must still hold what it lists ("" = rank 0 indexes the shards at start into
    OUTPUT_DIR/shard_index.json)."""
    sample_ids: str = "index"
    """webdataset: the per-sample state slot of a sample: index (its position in the index: dense) or key
    (img2dataset's integer key; the state is sized max key + 1)."""
    shard_window: int = 32
    """webdataset: the epoch's order permutes the shards, then the samples within windows of this many shards
    (reads stay within them; 0 = one window: a full permutation, for small sets: reads then jump between all shards)."""
    resampled: bool = False
    """webdataset: stream shards drawn with replacement (no exact order; see Bimodal-CL/README.md for its resume guarantee)."""
    shuffle_buffer: int = 2000
    """webdataset with resampled: samples in each worker's seeded shuffle buffer."""
    on_bad_sample: str = "error"
    """A training image that is missing or cannot be decoded: "error" stops naming the entry; "skip" trains on
    the next readable entry in its place (a fixed rule of the index: batch shapes, per-sample ids and exact resume
    hold) and counts it in the metrics (bad_samples). Default error: a run trains on exactly the data it was given."""
    max_bad_fraction: float = 0.01
    """With on_bad_sample=skip: stop with an error once more than this fraction of the entries proved bad."""

    def __post_init__(self):
        if self.num_workers < 0 or self.max_words < 1 or self.synthetic_pairs < 2:
            raise ValueError("need data.num_workers >= 0, data.max_words >= 1 and data.synthetic_pairs >= 2")
        if self.format not in ("json", "webdataset") or self.sample_ids not in ("index", "key"):
            raise ValueError(f"need data.format json | webdataset and data.sample_ids index | key, got "
                             f"{self.format!r}, {self.sample_ids!r}")
        if self.shard_window < 0 or self.shuffle_buffer < 1:
            raise ValueError("need data.shard_window >= 0 and data.shuffle_buffer >= 1")
        check_policy(self.on_bad_sample, self.max_bad_fraction)


@dataclass
class LossConfig:
    tau: float = 0.01
    """Fixed temperature of clip, cyclip and sogclr (the paper's CLIP baseline: 0.01)."""
    gamma: float = 0.8
    """Moving-average rate of the per-sample estimates (sogclr, isogclr, isogclr_tempnet)."""
    rho: float = 7.0
    """KL budget of the DRO objective (isogclr, isogclr_tempnet); the paper uses 7.0 with TempNet."""
    lambda_inmodal: float = 0.25
    """CyCLIP in-modal consistency weight."""
    lambda_crossmodal: float = 0.25
    """CyCLIP cross-modal consistency weight."""
    isogclr_tau_init: float = 0.01
    """iSogCLR: initial per-sample temperature."""
    isogclr_tau_min: float = 0.005
    """iSogCLR: lower end of the per-sample temperatures."""
    isogclr_tau_max: float = 0.05
    """iSogCLR: upper end of the per-sample temperatures."""
    isogclr_eta: float = 0.03
    """iSogCLR: step size of the per-sample temperature updates."""
    isogclr_beta: float = 0.5
    """iSogCLR: momentum of the per-sample temperature updates."""
    isogclr_grad_clamp: Optional[float] = 5.0
    """iSogCLR: clamp of the tau-gradient weight before its moving average (the authors' [-5, 5]; null = off)."""
    gamma_schedule: str = "constant"
    """constant: gamma throughout; cosine: from 1 in the first epoch down to gamma at gamma_decay_epochs, per
    epoch (FastCLIP, DistTempNet)."""
    gamma_decay_epochs: int = 0
    """cosine: the epochs the decay takes (0 = all of train.epochs)."""
    state_on_host: bool = False
    """Keep the per-sample state in (pinned) host memory and move only the batch's rows each step (web scale:
    18 bytes per sample for sogclr / isogclr_tempnet, 34 for isogclr, none on the GPU)."""

    def __post_init__(self):
        if self.gamma_schedule not in ("constant", "cosine") or self.gamma_decay_epochs < 0:
            raise ValueError(f"need loss_args.gamma_schedule constant | cosine and gamma_decay_epochs >= 0, got "
                             f"{self.gamma_schedule!r}, {self.gamma_decay_epochs}")
        if not self.tau > 0 or not 0 < self.gamma <= 1 or not self.rho >= 0:
            raise ValueError(f"need loss_args.tau > 0, 0 < gamma <= 1, rho >= 0; got {self.tau}, {self.gamma}, "
                             f"{self.rho}")
        check_tau_range(self.isogclr_tau_min, self.isogclr_tau_max)
        if not self.isogclr_tau_min <= self.isogclr_tau_init <= self.isogclr_tau_max:
            raise ValueError(f"loss_args.isogclr_tau_init={self.isogclr_tau_init} must lie in "
                             f"[{self.isogclr_tau_min}, {self.isogclr_tau_max}]")


@dataclass
class ClipTempNetConfig:
    num_prototypes: int = 256
    """M, prototypes per TempNet; initialised from the first global batch, which must hold at least M pairs."""
    tau_min: float = 0.005
    """Lower end of the predicted temperature."""
    tau_max: float = 0.05
    """Upper end of the predicted temperature."""
    dropout: float = 0.5
    """Dropout inside the TempNets."""
    lr: float = 3e-5
    """Adam learning rate of the TempNets (their own optimizer)."""
    lr_decay: float = 0.9
    """The TempNet learning rate is multiplied by this after every epoch."""
    prototype_init: str = "features"
    """What the first global batch's prototypes are copied from: "features" (the L2-normalised embeddings) or
    "projections" (the projections before normalisation, as the authors' code). PrototypeTempNet normalises its
    prototypes in the forward, so both start from the same directions; their norms differ (how fast Adam turns them)."""

    def __post_init__(self):
        check_tau_range(self.tau_min, self.tau_max)
        if self.prototype_init not in TempNetPair.PROTOTYPE_INITS:
            raise ValueError(f"tempnet.prototype_init must be 'features' or 'projections', got {self.prototype_init!r}")
        if self.num_prototypes < 1 or not self.lr > 0 or not 0 < self.lr_decay <= 1 or not 0 <= self.dropout < 1:
            raise ValueError("need tempnet.num_prototypes >= 1, lr > 0, 0 < lr_decay <= 1, 0 <= dropout < 1")


@dataclass
class OptimConfig(with_defaults(BaseOptimConfig, lr=8e-4, min_lr=1e-5, weight_decay=0.02, betas=(0.9, 0.999),
                                warmup_steps=2000, grad_clip=0.0)):
    """The shared optimizer fields (tempnet.train.run_config) with this trainer's defaults, and the warm-up's
    start and the schedule's unit."""

    warmup_start_lr: float = 0.0
    """The learning rate the warm-up starts from (the authors: 1e-5)."""
    schedule_unit: str = "step"
    """step: the cosine moves every step; epoch: once per epoch, constant within it (the authors' code)."""

    def __post_init__(self):
        super().__post_init__()
        if self.schedule_unit not in ("step", "epoch"):
            raise ValueError(f"optim.schedule_unit must be 'step' or 'epoch', got {self.schedule_unit!r}")
        if not 0 <= self.warmup_start_lr <= self.lr:
            raise ValueError(f"optim.warmup_start_lr must lie in [0, optim.lr], got {self.warmup_start_lr}")


@dataclass
class TrainConfig(with_defaults(BaseTrainConfig, precision="fp16", seed=42, log_every=50, save_every=0, keep_last=2)):
    """The shared run settings (tempnet.train.run_config) with this trainer's defaults, and the run's length
    in epochs and its per-process batch."""

    epochs: int = 30
    """Training epochs; the cosine schedule spans all of them."""
    batch_size: int = 128
    """Pairs per GPU (process) per step; the loss sees the global batch of world_size x batch_size."""
    stop_after_epochs: int = 0
    """Stop after this epoch with its checkpoint written, as if the job died there (0 = run to the end)."""

    def __post_init__(self):
        super().__post_init__()
        if self.epochs < 1 or self.batch_size < 1 or self.stop_after_epochs < 0:
            raise ValueError(f"need train.epochs >= 1, train.batch_size >= 1 and train.stop_after_epochs >= 0, got "
                             f"{self.epochs}, {self.batch_size}, {self.stop_after_epochs}")


#: Fields that may change when a run is resumed (everything else is what was trained).
RESUME_SAFE = run_config.RESUME_SAFE + (
    "train.epochs", "train.stop_after_epochs", "data.num_workers",
    "data.on_bad_sample", "data.max_bad_fraction",  # a run stopped by a bad image may resume with skip
    "data.train_shards", "data.train_index",  # the shards' content is checked (shard_list_hash), not paths
    "eval")


@dataclass
class RetrievalSetConfig:
    name: str = ""
    """Key of this set in eval.json (e.g. "flickr30k")."""
    json: str = ""
    """Karpathy-split JSON [{"image": path, "caption": [str, ...]}]."""
    image_root: str = ""
    """Folder the image paths are relative to."""


@dataclass
class ZeroShotSetConfig:
    name: str = ""
    """Key of this set in eval.json (e.g. "imagenet")."""
    kind: str = "folder"
    """"cifar10", "cifar100" (torchvision folders), "imagenet" (val ImageFolder) or "folder"."""
    root: str = ""
    """The data folder."""
    templates: list = field(default_factory=list)
    """Prompt templates with one "{}" ([] = the kind's default ensemble)."""


@dataclass
class EvalConfig:
    retrieval: list = field(default_factory=list)
    """Retrieval sets ({name, json, image_root}); the first one's metrics also appear unprefixed in eval.json."""
    zeroshot: list = field(default_factory=list)
    """Zero-shot sets ({name, kind, root, templates}); the first one gives the unprefixed zeroshot_top1."""
    every_epoch: bool = True
    """Evaluate at the end of every epoch (else only after the last)."""
    select_best: str = ""
    """An eval.json key (e.g. "coco_val/r_mean"): after each evaluation that improves it, the epoch's checkpoint
    is copied to OUTPUT_DIR/checkpoint-best (the authors evaluate the checkpoint best on COCO val). "" = off."""
    batch_size: int = 256
    """Images or texts per forward pass."""
    num_workers: int = 8
    """Loader workers for evaluation images."""

    def __post_init__(self):
        self.retrieval = [s if isinstance(s, RetrievalSetConfig) else RetrievalSetConfig(**s) for s in self.retrieval]
        self.zeroshot = [s if isinstance(s, ZeroShotSetConfig) else ZeroShotSetConfig(**s) for s in self.zeroshot]
        for names in ([s.name for s in self.retrieval], [s.name for s in self.zeroshot]):  # metric keys: NAME/KEY,
            if any(not n for n in names) or len(set(names)) != len(names):  # retrieval's and zero-shot's differ
                raise ValueError(f"every eval set needs a non-empty name, unique among its kind, got {names}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("need eval.batch_size >= 1 and eval.num_workers >= 0")


@dataclass
class BimodalConfig:
    loss: str = "isogclr_tempnet"
    """Which contrastive loss: a name in tempnet.losses.CONTRASTIVE_LOSSES (clip | cyclip | sogclr | isogclr |
    isogclr_tempnet, the paper's TempNet + robust loss)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Towers and projections."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data and augmentation."""
    loss_args: LossConfig = field(default_factory=LossConfig)
    """Hyper-parameters of the losses."""
    tempnet: ClipTempNetConfig = field(default_factory=ClipTempNetConfig)
    """The two TempNets of isogclr_tempnet (ignored by the other losses) and their optimizer."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The model's optimizer and schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loop, batch size, precision, logging, checkpoints."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation sets."""

    #: Keys of earlier versions: each is an error naming its new key (tempnet.config.load_config).
    RENAMED = {"train.save_every_steps": "train.save_every", "train.lr": "optim.lr",
               "train.min_lr_ratio": "optim.min_lr (an absolute learning rate, no longer a ratio of optim.lr)",
               "train.warmup_steps": "optim.warmup_steps", "train.weight_decay": "optim.weight_decay",
               "train.betas": "optim.betas", "train.grad_clip": "optim.grad_clip"}

    def check_runnable(self, world_size: int) -> None:
        """Checks that need the world size: called by the trainer before it builds anything."""
        global_batch = self.train.batch_size * world_size
        if CONTRASTIVE_LOSSES[self.loss].takes_tempnets and self.tempnet.num_prototypes > global_batch:
            raise ConfigError(f"tempnet.num_prototypes={self.tempnet.num_prototypes} is larger than the global batch "
                             f"of {global_batch} pairs (train.batch_size={self.train.batch_size} x {world_size} "
                             "processes), which initialises the prototypes: lower it or raise the batch size")

    def __post_init__(self):
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {' | '.join(LOSS_NAMES)}")
        best = self.eval.select_best
        if "/" in best:  # the set must exist (data.synthetic replaces the sets by its own, named "synthetic")
            names = ["synthetic"] if self.data.synthetic else [e.name for e in self.eval.retrieval + self.eval.zeroshot]
            if best.split("/", 1)[0] not in names:
                raise ValueError(f"eval.select_best={best!r} names the eval set {best.split('/', 1)[0]!r}, which is "
                                 f"not one of the configured sets {names}")
