"""The causal-LM families of transformers, and the TempNet class derived from each one.

A family is a `model_type` of transformers' causal-LM auto mapping (`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`):
its TempNet class is `(TempNetCausalLMMixin, <the family's *ForCausalLM>)` with config class
`<family config> + tempnet`, model_type "<family>_tempnet" (so a saved checkpoint records its base
family). The classes are made on first use, not listed by hand, and registered with `AutoConfig` /
`AutoModelForCausalLM`; `install_lazy_types` lets `AutoConfig` resolve any "<family>_tempnet" name
on demand, so a checkpoint of any family loads through `AutoModelForCausalLM.from_pretrained` without
importing all ~200 modeling modules at start-up.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tempnet.errors import ConfigError

__all__ = ["SUFFIX", "causal_lm_types", "base_type", "check_causal_lm", "config_class", "text_section", "derive",
           "class_names", "install_lazy_types"]

#: Appended to a family's model_type in the config of its TempNet class.
SUFFIX = "_tempnet"


def causal_lm_types() -> list[str]:
    """Every model_type transformers has a causal-LM class for (names only: nothing is imported)."""
    return [t for t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if t in CONFIG_MAPPING_NAMES]


def base_type(model_type: str) -> str:
    """The family of a model_type: "qwen2" for "qwen2" and "qwen2_tempnet"."""
    return model_type.removesuffix(SUFFIX)


def check_causal_lm(model_type: str) -> str:
    """The family of `model_type` (its config class's own model_type for an alias); a ConfigError (a ValueError)
    when transformers has no causal LM of that type."""
    base = base_type(str(model_type))
    if base not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or base not in CONFIG_MAPPING_NAMES:
        known = "transformers knows it, but not as a causal LM" if base in CONFIG_MAPPING_NAMES else \
            "transformers does not know it"
        raise ConfigError(f"model_type {model_type!r} is not a causal language model ({known}); TempNet wraps the "
                         f"{len(causal_lm_types())} causal-LM families of AutoModelForCausalLM")
    own = CONFIG_MAPPING[base].model_type  # an alias ("gpt-sw3" is GPT2Config) is its config class's family
    return own if own in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else base


def config_class(model_type: str) -> type:
    """The config class a causal-LM family's model is built from (its `model.base` keys are this class's): the
    family's config, or its text section's class where the causal LM takes only that (see `_text_config_class`)."""
    family = check_causal_lm(model_type)
    return _text_config_class(family) or CONFIG_MAPPING[family]


def _text_config_class(family: str) -> type | None:
    """The text-section config class of a family whose causal LM is built from that section alone (e.g.
    MllamaForCausalLM from MllamaTextConfig), else None: transformers' rule in AutoModelForCausalLM, where a
    composite config whose `sub_configs["text_config"]` is the model's `config_class` is replaced by its
    `get_text_config()`."""
    config = CONFIG_MAPPING[family]
    text = (getattr(config, "sub_configs", None) or {}).get("text_config")
    return text if text is not None and MODEL_FOR_CAUSAL_LM_MAPPING[config].config_class is text else None


def text_section(config, config_cls: type):
    """`config` as a model of `config_cls` (a TempNet config class) is built from it: the text section of a
    composite config when the family's causal LM takes only that, else `config` itself."""
    return config if isinstance(config, config_cls.__mro__[1]) else config.get_text_config()


def class_names(family: str) -> tuple[str, str]:
    """(config class name, model class name) of a family's TempNet classes: LlamaConfig -> LlamaTempNetConfig,
    LlamaTempNetForCausalLM."""
    prefix = CONFIG_MAPPING_NAMES[family].removesuffix("Config")
    return f"{prefix}TempNetConfig", f"{prefix}TempNetForCausalLM"


_DERIVED: dict[str, type] = {}


def derive(model_type: str, mixin: type, module: str) -> type:
    """The TempNet class of `model_type`'s family (made and registered once); its classes live in `module`."""
    family = check_causal_lm(model_type)
    if family in _DERIVED:
        return _DERIVED[family]
    model_base = MODEL_FOR_CAUSAL_LM_MAPPING[CONFIG_MAPPING[family]]
    config_base = config_class(family)  # (the text section's class for Mllama, Llama 4, Qwen 3.5, ...)
    config_name, model_name = class_names(family)
    config_cls = type(config_name, (config_base,), {
        "__module__": module, "__annotations__": {"tempnet": "dict | None"}, "tempnet": None,
        "model_type": family + SUFFIX,
        "__doc__": f"{config_base.__name__} plus `tempnet`: the TempNetConfig dict of the temperature head."})
    # the family's own fp32 modules stay fp32, and so does the head
    keep_fp32 = [*(getattr(model_base, "_keep_in_fp32_modules_strict", None) or []), "tempnet"]
    model_cls = type(model_name, (mixin, model_base), {
        "__module__": module, "config_class": config_cls, "_keep_in_fp32_modules_strict": keep_fp32,
        "__doc__": f"{model_base.__name__} with a temperature head (`tempnet.*`)."})
    # the family's checkpoint key renamings (e.g. GPT-NeoX's embed_out <-> lm_head) are looked up by class name
    # or model_type, neither of which is the family's here: register them under the new class's name
    conversions = get_checkpoint_conversion_mapping(model_base.__name__) or get_checkpoint_conversion_mapping(family)
    if conversions:
        register_checkpoint_conversion_mapping(model_name, conversions, overwrite=True)
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    _DERIVED[family] = model_cls
    return model_cls


def family_of_class_name(name: str) -> str | None:
    """The family whose TempNet config or model class is called `name` (for pickling by name), or None."""
    for family in causal_lm_types():
        if name in class_names(family):
            return family
    return None


class _LazyTempNetTypes(dict):
    """AutoConfig's registry of extra model types, answering every "<family>_tempnet" by deriving it."""

    def __init__(self, content: dict, make):
        super().__init__(content)
        self._make = make

    def _derivable(self, key) -> bool:
        return isinstance(key, str) and key.endswith(SUFFIX) and base_type(key) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES \
            and base_type(key) in CONFIG_MAPPING_NAMES

    def __contains__(self, key) -> bool:
        return super().__contains__(key) or self._derivable(key)

    def __missing__(self, key):
        if not self._derivable(key):
            raise KeyError(key)
        return self._make(key).config_class  # (registered under its family's name)


def install_lazy_types(make) -> None:
    """Let AutoConfig resolve "<family>_tempnet" on demand through `make(model_type)` (which registers it).

    transformers' `_LazyConfigMapping` keeps registered types in `_extra_content` (pinned transformers 5.24);
    wrapping that dict is the one place this module relies on a private attribute.
    """
    if not isinstance(CONFIG_MAPPING._extra_content, _LazyTempNetTypes):
        CONFIG_MAPPING._extra_content = _LazyTempNetTypes(CONFIG_MAPPING._extra_content, make)
