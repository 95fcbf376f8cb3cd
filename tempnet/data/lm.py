"""LLM training data: tokenise once, cache to disk, memory-map, and serve fixed-length examples.

Two formats:
  packed  documents -> tokens + EOS, concatenated and cut into blocks of `seq_len` (pretraining).
  alpaca  {"instruction", "input", "output"} records -> one example each, padded to `seq_len`, with
          the prompt's labels set to -100 so only the response is learned (LLaMA-2-Chat TempNet).

The cache directory's name is a hash of the source, the format and the tokenizer's vocabulary, so
runs and ranks share it safely; it is written to a temporary directory and renamed when complete.
The trainer builds it on rank 0 first (`main_process_first`), then every rank memory-maps it; on
several nodes `data.cache_dir` must be on a filesystem they share.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tempnet.data.lm_inputs import check_column, check_local_files
from tempnet.data.sampler import StepBatchSampler  # noqa: F401  (the one sampler; re-exported)
from tempnet.errors import ConfigError, DataError, check_model_path

__all__ = ["build_token_cache", "PackedBlocks", "InstructionExamples", "open_token_cache", "StepBatchSampler",
           "format_prompt", "chat_tokens", "check_chat_template", "TOKENIZER_TEMPLATE", "IGNORE_INDEX"]

IGNORE_INDEX = -100

_PROMPTS = {
    # LLaMA-2-Chat's own format: the tokenizer adds <s>, the response ends with </s>.
    "llama2_chat": "[INST] {instruction}{input_block} [/INST]",
    # The Stanford Alpaca template.
    "alpaca": ("Below is an instruction that describes a task{with_input}. Write a response that appropriately "
               "completes the request.\n\n### Instruction:\n{instruction}{input_block}\n\n### Response:\n"),
}


#: data.prompt_template that formats records with the tokenizer's own chat template.
TOKENIZER_TEMPLATE = "tokenizer"


def _user_message(record: dict) -> str:
    instruction, extra = str(record.get("instruction", "")).strip(), str(record.get("input") or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def check_chat_template(tokenizer) -> None:
    """data.prompt_template=tokenizer needs a tokenizer that has a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"data.prompt_template={TOKENIZER_TEMPLATE}: the tokenizer ({tokenizer.name_or_path}) has no "
                          "chat template (tokenizer_config.json / chat_template.jinja); use llama2_chat or alpaca")


def chat_tokens(record: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one record in the tokenizer's chat template (`apply_chat_template`).

    The prompt is the user turn plus the template's generation prompt; the response is the rest of the
    conversation with the record's output as the assistant turn (its end-of-turn tokens included). A template
    whose conversation does not begin with its own prompt cannot be masked: a DataError naming the record.
    """
    user = [{"role": "user", "content": _user_message(record)}]
    prompt = list(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False))
    whole = list(tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": str(record["output"]).strip()}], tokenize=True, return_dict=False))
    if whole[:len(prompt)] != prompt:
        raise DataError(f"the tokenizer's chat template renders the prompt of the record {_user_message(record)[:60]!r} "
                        "differently inside the whole conversation, so the prompt cannot be masked out of the loss; "
                        "use data.prompt_template=llama2_chat or alpaca")
    return prompt, whole[len(prompt):]


def format_prompt(record: dict, template: str) -> str:
    """The prompt of one alpaca record (instruction, optional input) in the given template."""
    instruction, extra = str(record.get("instruction", "")).strip(), str(record.get("input") or "").strip()
    if template == "llama2_chat":
        return _PROMPTS[template].format(instruction=instruction, input_block=f"\n\n{extra}" if extra else "")
    return _PROMPTS[template].format(instruction=instruction,
                                     with_input=", paired with an input that provides further context" if extra else "",
                                     input_block=f"\n\n### Input:\n{extra}" if extra else "")


def _tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, type(tokenizer).__name__)
    if getattr(tokenizer, "chat_template", None):  # data.prompt_template=tokenizer formats with it
        ids += (tokenizer.chat_template,)
    return hashlib.sha256(json.dumps([vocab, ids]).encode()).hexdigest()[:16]


def _source_fingerprint(data) -> dict:
    files = [{"path": str(Path(f).resolve()), "size": Path(f).stat().st_size, "mtime": Path(f).stat().st_mtime_ns}
             for f in data.files] if not data.dataset else []
    return {"dataset": data.dataset, "dataset_config": data.dataset_config, "split": data.split, "files": files,
            "text_field": data.text_field, "format": data.format, "seq_len": data.seq_len,
            "prompt_template": data.prompt_template if data.format == "alpaca" else None,
            "blank_documents": "dropped"}  # caches of earlier versions kept them (as a lone EOS): rebuild


def _load_records(data, cache_root: Path):
    """The raw records as a `datasets.Dataset` (HF name, save_to_disk directory, or local files)."""
    import datasets

    if data.dataset:
        path = Path(check_model_path(data.dataset, "data.dataset"))
        if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(path))
            return ds[data.split] if isinstance(ds, datasets.DatasetDict) else ds
        return datasets.load_dataset(data.dataset, data.dataset_config, split=data.split)
    kinds = {"text" if str(f).endswith(".txt") else "json" if str(f).endswith((".json", ".jsonl")) else None
             for f in data.files}
    if None in kinds or len(kinds) != 1:
        raise ConfigError(f"data.files must all be .txt or all .json/.jsonl files, got {data.files}")
    return datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in data.files], split="train",
                                 cache_dir=str(cache_root / "hf_datasets"))


def _packed_tokens(records, data, tokenizer):
    """Every document -> its tokens followed by EOS, as a datasets column `input_ids`."""
    if data.text_field not in records.column_names:
        raise ConfigError(f"data.text_field={data.text_field!r} is not a column of the data; columns: "
                          f"{records.column_names}")
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token: packed documents need one as separator")
    check_column(records, data.text_field, "data")

    def tokenize(batch):
        texts = [t for t in batch[data.text_field] if t.strip()]  # a blank document would add a lone EOS
        ids = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        ids = [x + [tokenizer.eos_token_id] for x in ids]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    return records.map(tokenize, batched=True, num_proc=data.num_proc, remove_columns=records.column_names,
                       desc="tokenising")


def _alpaca_tokens(records, data, tokenizer):
    """Every record -> prompt + response + EOS tokens and labels with the prompt masked, cut to seq_len."""
    for column in ("instruction", "output"):
        if column not in records.column_names:
            raise DataError(f"alpaca data needs an {column!r} column; columns: {records.column_names}")
        check_column(records, column, "alpaca data")
    if data.prompt_template == TOKENIZER_TEMPLATE:
        check_chat_template(tokenizer)

    def tokenize(batch):
        out = {"input_ids": [], "labels": [], "length": []}
        for i in range(len(batch["instruction"])):
            record = {k: batch[k][i] for k in batch}
            if not record["output"].strip():
                continue  # no response: nothing to learn but EOS
            if data.prompt_template == TOKENIZER_TEMPLATE:
                prompt, answer = chat_tokens(record, tokenizer)
            else:
                prompt = tokenizer(format_prompt(record, data.prompt_template), add_special_tokens=True,
                                   verbose=False)["input_ids"]
                answer = tokenizer(" " + str(record["output"]).strip(), add_special_tokens=False,
                                   verbose=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (prompt + answer)[:data.seq_len]
            labels = ([IGNORE_INDEX] * len(prompt) + answer)[:data.seq_len]
            if all(x == IGNORE_INDEX for x in labels):
                continue  # the prompt alone fills seq_len: nothing to learn from this record
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
        return out

    return records.map(tokenize, batched=True, num_proc=data.num_proc, remove_columns=records.column_names,
                       desc="tokenising")


def _write(tokens, data, tokenizer, target: Path, meta: dict) -> None:
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32
    # a map whose every batch returned nothing (no alpaca record fits) has no columns at all
    lengths = np.asarray(tokens["length"] if "length" in tokens.column_names else [], dtype=np.int64)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    if data.format == "packed":
        total = int(lengths.sum())
        if total < data.seq_len:
            raise DataError(f"the data holds {total} tokens, fewer than one block of data.seq_len={data.seq_len}: "
                            "give more text or lower data.seq_len")
        arr = np.memmap(tmp / "tokens.bin", dtype=dtype, mode="w+", shape=(total,))
        pos = 0
        for batch in tokens.iter(batch_size=10_000):
            for ids in batch["input_ids"]:
                arr[pos:pos + len(ids)] = ids
                pos += len(ids)
        shapes = {"tokens": [total]}
    else:
        n, pad = len(lengths), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if n == 0:
            raise DataError("no alpaca record with a response fits in data.seq_len: raise it")
        ids_arr = np.memmap(tmp / "input_ids.bin", dtype=dtype, mode="w+", shape=(n, data.seq_len))
        lab_arr = np.memmap(tmp / "labels.bin", dtype=np.int32, mode="w+", shape=(n, data.seq_len))
        ids_arr[:], lab_arr[:] = pad, IGNORE_INDEX
        i = 0
        for batch in tokens.iter(batch_size=10_000):
            for ids, labels in zip(batch["input_ids"], batch["labels"]):
                ids_arr[i, :len(ids)], lab_arr[i, :len(labels)] = ids, labels
                i += 1
        np.save(tmp / "lengths.npy", lengths)
        shapes = {"input_ids": [n, data.seq_len], "labels": [n, data.seq_len]}
    (tmp / "meta.json").write_text(json.dumps({**meta, "dtype": np.dtype(dtype).name, "shapes": shapes}, indent=1))
    if target.exists():  # another process finished the same cache first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)


def build_token_cache(data, tokenizer, cache_root: str | Path) -> Path:
    """Tokenise `data` (a DataConfig) with `tokenizer` into `cache_root/<format>-<hash>/` unless it exists.

    Call on rank 0 first; the other ranks then find the finished directory and only read it.
    Returns the cache directory.
    """
    missing = [f for f in data.files if not Path(f).is_file()] if not data.dataset else []
    if missing:
        raise FileNotFoundError(f"data.files: no such file(s) {missing}")
    if not data.dataset and not data.files:
        raise ConfigError("no training data: set data.dataset or data.files")
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    meta = {"source": _source_fingerprint(data), "tokenizer": _tokenizer_fingerprint(tokenizer),
            "tokenizer_name": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(tokenizer)}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_root / f"{data.format}-{key}"
    if (target / "meta.json").exists():
        return target
    if not data.dataset:
        check_local_files(data)  # before datasets reads them: its errors name neither the file nor the line
    records = _load_records(data, cache_root)
    tokens = (_packed_tokens if data.format == "packed" else _alpaca_tokens)(records, data, tokenizer)
    _write(tokens, data, tokenizer, target, meta)
    return target


def _memmap(path: Path, meta: dict, name: str, dtype=None) -> np.memmap:
    return np.memmap(path / f"{name}.bin", dtype=dtype or meta["dtype"], mode="r", shape=tuple(meta["shapes"][name]))


class _MappedCache(Dataset):
    """Opens its memory maps lazily in each process, so DataLoader workers never pickle the arrays."""

    names: tuple = ()

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self._arrays: dict | None = None

    def _array(self, name: str) -> np.memmap:
        if self._arrays is None:
            self._arrays = {n: _memmap(self.path, self.meta, n, np.int32 if n == "labels" else None) for n in self.names}
        return self._arrays[name]

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}


class PackedBlocks(_MappedCache):
    """Fixed-length blocks of a packed token cache: item i = tokens[i*L:(i+1)*L] as input_ids and labels.

    The model shifts labels by one itself (Hugging Face convention). The last partial block is dropped.
    """

    names = ("tokens",)

    def __init__(self, path: str | Path, seq_len: int):
        super().__init__(path)
        self.seq_len = seq_len
        self.num_blocks = self.meta["shapes"]["tokens"][0] // seq_len

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self._array("tokens")[i * self.seq_len:(i + 1) * self.seq_len]
        ids = torch.from_numpy(block.astype(np.int64))  # [L]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class InstructionExamples(_MappedCache):
    """Padded instruction examples of an alpaca token cache: input_ids, attention_mask, labels [L] each."""

    names = ("input_ids", "labels")

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.lengths = np.load(self.path / "lengths.npy")

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self._array("input_ids")[i].astype(np.int64))  # [L]
        mask = (torch.arange(len(ids)) < int(self.lengths[i])).long()
        labels = torch.from_numpy(self._array("labels")[i].astype(np.int64))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def open_token_cache(path: str | Path, data) -> Dataset:
    """The Dataset over a cache built by `build_token_cache` for the same DataConfig."""
    return PackedBlocks(path, data.seq_len) if data.format == "packed" else InstructionExamples(path)
