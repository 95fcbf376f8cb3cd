"""The config tree of the LLM trainer (GPT_2, LLaMA-1, LLaMA-2): one dataclass per section.

Defaults < the folder's YAML < `key.sub=value` on the command line (`tempnet.config.load_config`).
Every field has a docstring; `__post_init__` rejects impossible values with a message naming the field.
The `train` and `optim` fields the CLIP trainer has too are defined once, in tempnet.train.run_config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from tempnet.config import with_defaults
from tempnet.errors import ConfigError
from tempnet.integrations.families import causal_lm_types, config_class
from tempnet.integrations.head import TempNetSettings
from tempnet.losses.objectives import OBJECTIVES
from tempnet.train import run_config
from tempnet.train.precision import PRECISIONS
from tempnet.train.run_config import BaseOptimConfig, BaseTrainConfig

__all__ = ["LMTrainConfig", "ModelConfig", "TempNetTrainSettings", "DataConfig", "OptimConfig", "TrainConfig",
           "EngineConfig", "MODES", "ARCHS", "ENGINES", "PRECISIONS", "RESUME_SAFE"]

MODES = ("scratch", "finetune", "frozen")
#: model.arch of a scratch model: every causal-LM model_type of transformers (gpt2, llama, qwen2, gemma2, ...).
ARCHS = tuple(causal_lm_types())
ENGINES = ("ddp", "deepspeed", "accelerate")
DTYPES = (None, "float32", "float16", "bfloat16")


def _choice(value, allowed, name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass
class ModelConfig:
    mode: str = "scratch"
    """scratch: a random model from `arch` + `base`; finetune: load `path`, train everything;
    frozen: load `path`, train only TempNet (the LLaMA-2 setting)."""
    arch: str = "gpt2"
    """Model family of a scratch model: any causal-LM model_type of transformers (gpt2, llama, qwen2, mistral,
    gemma2, phi3, ...); `base` holds keyword arguments of that family's config class."""
    base: dict = field(default_factory=dict)
    """Keyword arguments of the Hugging Face config of a scratch model (n_layer, n_embd, ...; the family's keys)."""
    path: Optional[str] = None
    """Hub name or local directory of the pretrained model (finetune / frozen)."""
    tokenizer: Optional[str] = None
    """Hub name or directory of the tokenizer; defaults to `path`."""
    dtype: Optional[str] = None
    """Dtype the pretrained weights are loaded in (float32, float16, bfloat16); None keeps float32."""
    fresh_tempnet: bool = False
    """Finetune / frozen: start from a new TempNet even if the checkpoint holds `tempnet.*` weights."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (large models)."""

    def __post_init__(self):
        _choice(self.mode, MODES, "model.mode")
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be a causal-LM model_type of transformers (gpt2, llama, qwen2, "
                             f"mistral, gemma2, ... {len(ARCHS)} in all), got {self.arch!r}")
        _choice(self.dtype, DTYPES, "model.dtype")
        if not isinstance(self.base, dict):
            raise ValueError(f"model.base must be a mapping of config keyword arguments, got {self.base!r}")


@dataclass
class DataConfig:
    format: str = "packed"
    """packed: documents tokenised, joined with EOS and cut into blocks of seq_len (pretraining);
    alpaca: instruction/input/output records, one padded example each, prompt masked out of the loss."""
    dataset: Optional[str] = None
    """Hugging Face dataset name, a `save_to_disk` directory, a loadable dataset directory, or one local
    .txt / .json / .jsonl file (then the same as data.files=[that file])."""
    dataset_config: Optional[str] = None
    """Configuration name of `dataset`, if it has several."""
    split: str = "train"
    """Split of `dataset` to train on."""
    files: list = field(default_factory=list)
    """Local .txt / .json / .jsonl files, used when `dataset` is not set."""
    text_field: str = "text"
    """Column holding the document text (packed format, JSON / HF data)."""
    prompt_template: str = "llama2_chat"
    """How an alpaca record becomes a prompt: llama2_chat ([INST] ... [/INST]), alpaca, or tokenizer (the
    tokenizer's own chat template, `apply_chat_template`: user turn = instruction + input, assistant turn = output)."""
    seq_len: int = 2048
    """Tokens per training example."""
    cache_dir: Optional[str] = None
    """Where token caches live (shared by runs and ranks); None: OUTPUT_DIR/token_cache."""
    num_proc: int = 1
    """Processes for tokenisation (datasets.map)."""
    num_workers: int = 0
    """DataLoader workers per rank."""
    synthetic: bool = False
    """Generate a tiny corpus, tokenizer and (finetune / frozen) base checkpoint under
    OUTPUT_DIR/debug_assets and point data.files, model.tokenizer and model.path at them: no download. Setting any
    of those (or data.dataset) as well is an error: the run would train the generated model, not yours."""
    synthetic_documents: int = 400
    """Documents (or instruction records) of the synthetic corpus."""
    synthetic_vocab_size: int = 384
    """Vocabulary of the synthetic tokenizer (model.base.vocab_size must be at least this)."""

    def __post_init__(self):
        _choice(self.format, ("packed", "alpaca"), "data.format")
        if self.synthetic_documents < 1 or self.synthetic_vocab_size < 300:
            raise ValueError(f"data.synthetic_documents must be >= 1 and data.synthetic_vocab_size >= 300 (byte "
                             f"fallback needs ~290 pieces), got {self.synthetic_documents}, {self.synthetic_vocab_size}")
        _choice(self.prompt_template, ("llama2_chat", "alpaca", "tokenizer"), "data.prompt_template")
        if self.seq_len < 2:
            raise ValueError(f"data.seq_len must be >= 2, got {self.seq_len}")
        if isinstance(self.files, str):
            self.files = [self.files]
        if self.dataset and str(self.dataset).endswith((".txt", ".json", ".jsonl")):
            self.files, self.dataset = [self.dataset], None
        if self.num_proc < 1 or self.num_workers < 0:
            raise ValueError(f"data.num_proc must be >= 1 and data.num_workers >= 0, got {self.num_proc}, "
                             f"{self.num_workers}")


@dataclass
class OptimConfig(with_defaults(BaseOptimConfig, lr=6e-4, min_lr=6e-5, weight_decay=0.1, betas=(0.9, 0.95),
                                grad_clip=1.0)):
    """The shared optimizer fields (tempnet.train.run_config) with this trainer's defaults, and AdamW's eps."""

    eps: float = 1e-8
    """AdamW epsilon."""


@dataclass
class TrainConfig(with_defaults(BaseTrainConfig, seed=1234, save_every=1000, keep_last=3)):
    """The shared run settings (tempnet.train.run_config) with this trainer's defaults, and the run's length
    and batch in optimizer steps."""

    max_steps: int = 50_000
    """Optimizer steps of the whole run (the schedule spans them)."""
    micro_batch_size: int = 4
    """Examples per rank per forward pass."""
    global_batch_size: int = 16
    """Examples per optimizer step over all ranks: micro_batch_size x world size x accumulation steps."""

    def __post_init__(self):
        super().__post_init__()
        if self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if self.stop_after_steps is not None and not self.stop_after_steps <= self.max_steps:
            raise ValueError(f"train.stop_after_steps must lie in [1, train.max_steps={self.max_steps}], "
                             f"got {self.stop_after_steps}")
        if self.micro_batch_size < 1 or self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"train.global_batch_size={self.global_batch_size} must be a positive multiple of "
                             f"train.micro_batch_size={self.micro_batch_size}")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per rank per optimizer step, with a clear error if the batch does not divide."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(f"train.global_batch_size={self.global_batch_size} is not divisible by "
                             f"micro_batch_size={self.micro_batch_size} x world size={world_size}")
        return self.global_batch_size // per_step


@dataclass
class EngineConfig:
    name: str = "ddp"
    """ddp: one process or torchrun (DistributedDataParallel); deepspeed: ZeRO from `deepspeed_config`
    (launch with `deepspeed` or `torchrun`); accelerate: `accelerate launch --config_file ...` (FSDP)."""
    deepspeed_config: Optional[str] = None
    """Path of the DeepSpeed JSON; batch sizes, clipping and precision set to "auto" are filled from this config."""

    def __post_init__(self):
        _choice(self.name, ENGINES, "engine.name")
        if self.name == "deepspeed" and not self.deepspeed_config:
            raise ValueError("engine.name=deepspeed needs engine.deepspeed_config=PATH (a DeepSpeed JSON file)")


@dataclass
class TempNetTrainSettings(TempNetSettings):
    """The head's settings (stored in checkpoints) plus how the trainer optimises it (not stored)."""

    lr: float = 2e-6
    """Learning rate of TempNet (its own parameter group)."""
    lr_schedule: str = "constant"
    """constant: TempNet's lr stays `lr` (the authors' code); cosine: it follows the model's warm-up and
    cosine decay, scaled to peak at `lr`."""
    weight_decay: float = 0.0
    """AdamW weight decay of TempNet's matrices."""
    allow_large_rho: bool = False
    """Train anyway (with a warning) when rho >= log V, where the KL constraint is vacuous (an error otherwise)."""
    global_lr: float = 1e-2
    """Learning rate of the single learned temperature of objective=dro (the "DRO only" ablation row):
    its own group, constant, so tau can reach its DRO optimum within a run (at TempNet's 2e-6 it
    would hardly move)."""
    fused_loss: Optional[bool] = None
    """null (auto): the fused loss (`tempnet.ops.linear_tempnet_dro_loss`) where it reproduces the family's own
    logits, else the full-logits path, said once; true: the fused loss or an error naming why the family (or
    ZeRO-3) rules it out; false: the full-logits path."""

    def __post_init__(self):
        super().__post_init__()
        if self.rho is not None and self.target_entropy is not None:
            raise ValueError(f"tempnet.rho={self.rho} and tempnet.target_entropy={self.target_entropy} are exclusive "
                             "(rho = log V - target_entropy): set the other one to null")
        _choice(self.lr_schedule, ("constant", "cosine"), "tempnet.lr_schedule")
        if not self.lr > 0 or not self.global_lr > 0 or self.weight_decay < 0:
            raise ValueError(f"need tempnet.lr > 0, tempnet.global_lr > 0 and tempnet.weight_decay >= 0, got "
                             f"{self.lr}, {self.global_lr}, {self.weight_decay}")

    def head(self) -> dict:
        """Only the fields a checkpoint stores (TempNetSettings'); fused_loss auto is stored as true (the model
        takes the fused path only where it reproduces the family's logits)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TempNetSettings)}
        return {**fields, "fused_loss": self.fused_loss is not False}


#: Fields that may change when a run is resumed (everything else is what was trained).
RESUME_SAFE = run_config.RESUME_SAFE + ("train.max_steps", "data.num_workers", "data.num_proc", "data.cache_dir")


@dataclass
class LMTrainConfig:
    objective: str = "tempnet_dro"
    """ce (tau fixed), dro (one learned tau, robust loss), tempnet_ce, tempnet_dro (the paper)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The language model."""
    tempnet: TempNetTrainSettings = field(default_factory=TempNetTrainSettings)
    """The temperature head, the robust loss, and TempNet's optimisation."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loop, batch sizes, precision, checkpoints, logging."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Distributed engine."""

    #: Keys of earlier versions: each is an error naming its new key (tempnet.config.load_config).
    RENAMED = {"optim.tempnet_lr": "tempnet.lr", "debug.synthetic": "data.synthetic",
               "debug.num_documents": "data.synthetic_documents", "debug.vocab_size": "data.synthetic_vocab_size"}

    def __post_init__(self):
        _choice(self.objective, tuple(OBJECTIVES), "objective")
        if self.model.mode == "frozen" and not OBJECTIVES[self.objective].trains_temperature:
            trained = ", ".join(name for name, objective in OBJECTIVES.items() if objective.trains_temperature)
            raise ValueError(f"model.mode=frozen trains only the temperature, but objective={self.objective!r} "
                             f"has no trainable temperature; use one of {trained}")

    def check_runnable(self) -> None:
        """Checks that the (valid but empty) defaults fail, and that data.synthetic replaces no path the user set:
        called by the trainer before it starts."""
        if self.data.synthetic:  # it generates these: a value the user set would be replaced without a word
            paths = (("model.path", self.model.path), ("model.tokenizer", self.model.tokenizer),
                     ("data.files", self.data.files), ("data.dataset", self.data.dataset))
            given = [f"{key}={value}" for key, value in paths if value]
            if given:
                raise ConfigError(f"data.synthetic=true generates the corpus, tokenizer and base model under "
                                  f"OUTPUT_DIR/debug_assets, but {' and '.join(given)} "
                                  f"{'is' if len(given) == 1 else 'are'} set: set data.synthetic=false "
                                  "to train on your own model and data, or leave these keys unset")
        if self.model.mode == "scratch" and not self.model.base:
            raise ConfigError("model.mode=scratch needs model.base (keyword arguments of the model's config)")
        if self.model.mode != "scratch" and not self.model.path and not self.data.synthetic:
            raise ConfigError(f"model.mode={self.model.mode} needs model.path (a Hub name or a model directory)")
        if not self.data.dataset and not self.data.files and not self.data.synthetic:
            raise ConfigError("no training data: set data.dataset, data.files, or data.synthetic=true")
        if self.model.base:  # HF configs take any keyword: a misspelt one would be ignored without a word
            from tempnet.train.inputs import check_hf_config_keys

            check_hf_config_keys(config_class(self.model.arch), self.model.base, "model.base")
