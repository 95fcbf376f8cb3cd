"""The bimodal (CLIP-style) model: an image tower, a text tower, linear projections, L2 normalisation.

Towers come by name from the usual libraries, so the paper's ResNet-50 + DistilBERT and the debug
config's tiny random towers run through the same code:
    image: timm (`resnet50`, any timm name) or open_clip (the `.visual` of e.g. `RN50`);
    text:  transformers (`distilbert-base-uncased`, any encoder, by name or path; or a model type such as
           `distilbert` built from a config with `pretrained: false`) or open_clip (the text part of a model).
The text tower is pooled at the first position (ALBEF / the authors' code), open_clip's at its EOT token.
The two TempNets of the robust loss and their prototype rule are `tempnet.modules.TempNetPair` (re-exported here).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tempnet.errors import ConfigError, check_model_path
from tempnet.modules import TempNetPair
from tempnet.train.inputs import check_hf_config_keys, create_checked, init_parameters, load_pretrained

__all__ = ["DualEncoder", "TempNetPair", "TextTokenizer", "build_image_tower", "build_text_tower", "build_tokenizer"]


def build_image_tower(source: str, name: str, pretrained: bool | str = False,
                      kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, int]:
    """(module images [B, 3, H, W] -> features [B, D], D)."""
    kwargs = dict(kwargs or {})
    if source == "timm":
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"model.image.name={name!r} is not a timm model{_nearest(name, timm.list_models())}")
        model = create_checked(timm.create_model, kwargs, "model.image.kwargs", "timm", lambda _: _timm_keys(name),
                               name, pretrained=bool(pretrained), num_classes=0)
        return model, model.num_features
    if source == "open_clip":
        tag = _open_clip_tag(pretrained, "model.image.pretrained")
        visual = _open_clip_model(name, tag, kwargs, "model.image.kwargs").visual
        return visual, visual.output_dim
    raise ValueError(f"unknown image tower source {source!r}; choose 'timm' or 'open_clip'")


def _nearest(name: str, valid) -> str:
    near = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


def _timm_keys(name: str) -> set[str]:
    """What timm.create_model(name, ...) accepts: its own parameters and the model class's (built on the
    meta device, so nothing is allocated)."""
    import timm

    with torch.device("meta"):
        cls = type(timm.create_model(name, pretrained=False))
    return init_parameters(timm.create_model) | init_parameters(cls)


def _open_clip_tag(pretrained, where: str) -> str | None:
    """open_clip's `pretrained`: a tag ("openai") or a checkpoint file, which must then exist."""
    if not isinstance(pretrained, str) or not pretrained:
        return None
    if os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors")):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"{where}: no such checkpoint file: {pretrained}")
    return pretrained


def _open_clip_model(name: str, tag: str | None, kwargs: dict, where: str):
    import open_clip
    import open_clip.model as oc_model

    if name not in open_clip.list_models():
        raise ConfigError(f"{where.rsplit('.', 1)[0]}.name={name!r} is not an open_clip model"
                          f"{_nearest(name, open_clip.list_models())}")

    def valid(owner: str) -> set[str]:
        cls = getattr(oc_model, owner, None) or getattr(open_clip, owner, None)
        return init_parameters(open_clip.create_model) | (init_parameters(cls) if cls is not None else set())

    return create_checked(open_clip.create_model, kwargs, where, "open_clip", valid, name, pretrained=tag)


class _HFText(nn.Module):
    """A transformers encoder pooled at the first token ([CLS])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]  # [B, D]


class _OpenClipText(nn.Module):
    """The text half of an open_clip model (its image tower dropped, its logit scale frozen)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model.visual = nn.Identity()
        for name in ("logit_scale", "logit_bias"):
            if isinstance(getattr(model, name, None), nn.Parameter):
                getattr(model, name).requires_grad_(False)
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)  # [B, D]


def build_text_tower(source: str, name: str, pretrained: bool | str = True,
                     config_overrides: dict[str, Any] | None = None) -> tuple[nn.Module, int]:
    """(module (input_ids [B, L], attention_mask [B, L]) -> features [B, D], D)."""
    overrides = dict(config_overrides or {})
    if source == "hf":
        from transformers import AutoConfig, AutoModel
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if pretrained or name not in CONFIG_MAPPING:
            name = check_model_path(name, "model.text.name")
            config_cls = type(load_pretrained(AutoConfig.from_pretrained, name, "model.text.name"))
        else:
            config_cls = CONFIG_MAPPING[name]
        check_hf_config_keys(config_cls, overrides, "model.text.config_overrides")
        if pretrained:
            model = AutoModel.from_pretrained(name, **overrides)
        else:
            config = (AutoConfig.for_model(name, **overrides) if name in CONFIG_MAPPING
                      else AutoConfig.from_pretrained(name, **overrides))
            model = AutoModel.from_config(config)
        return _HFText(model), model.config.hidden_size
    if source == "open_clip":
        tag = _open_clip_tag(pretrained, "model.text.pretrained")
        model = _open_clip_model(name, tag, overrides, "model.text.config_overrides")
        return _OpenClipText(model), model.text_projection.shape[-1]
    raise ValueError(f"unknown text tower source {source!r}; choose 'hf' or 'open_clip'")


class TextTokenizer:
    """list[str] -> (input_ids [B, L], attention_mask [B, L]), padded to max_length.

    kind "hf": a transformers tokenizer by name or path; kind "open_clip": open_clip's BPE tokenizer
    (its vocabulary ships with the package, so it works offline; padding id 0).
    """

    def __init__(self, kind: str, name: str, max_length: int):
        self.kind, self.max_length = kind, max_length
        if kind == "hf":
            from transformers import AutoTokenizer

            self._tok = load_pretrained(AutoTokenizer.from_pretrained, check_model_path(name, "model.text.tokenizer"),
                                        "model.text.tokenizer")
        elif kind == "open_clip":
            from open_clip.tokenizer import SimpleTokenizer

            self._tok = SimpleTokenizer(context_length=max_length)
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'hf' or 'open_clip'")

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "hf":
            out = self._tok(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                            return_tensors="pt")
            return out["input_ids"], out["attention_mask"]
        ids = self._tok(list(texts))  # [B, L], 0 = padding
        return ids, (ids != 0).long()


def build_tokenizer(text_source: str, text_name: str, tokenizer: str, max_length: int) -> TextTokenizer:
    """tokenizer "" = the text tower's own (transformers' for an hf tower, open_clip's otherwise);
    "open_clip" = open_clip's BPE; anything else = a transformers tokenizer name or path."""
    if tokenizer == "open_clip" or (tokenizer == "" and text_source == "open_clip"):
        return TextTokenizer("open_clip", "", max_length)
    return TextTokenizer("hf", tokenizer or text_name, max_length)


class DualEncoder(nn.Module):
    """Towers + linear projections to embed_dim + L2 normalisation (the paper: 256-d)."""

    def __init__(self, image_tower: nn.Module, image_dim: int, text_tower: nn.Module, text_dim: int,
                 embed_dim: int = 256):
        super().__init__()
        self.visual, self.text = image_tower, text_tower
        self.vision_proj = nn.Linear(image_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.embed_dim = embed_dim

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """images [B, 3, H, W] -> unit embeddings [B, E] (the raw projections with normalize=False)."""
        x = self.vision_proj(self.visual(images))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """token ids [B, L] -> unit embeddings [B, E] (the raw projections with normalize=False)."""
        x = self.text_proj(self.text(input_ids, attention_mask))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images, input_ids, attention_mask, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images, normalize), self.encode_text(input_ids, attention_mask, normalize)

