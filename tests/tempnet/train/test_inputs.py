"""The start-of-run input checks in-process: keys handed to other libraries, local paths, bad YAML overrides,
LLM text files, the export target, the one-line message of a worker's error."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from tempnet.config import parse_overrides
from tempnet.data.lm_inputs import check_local_files
from tempnet.errors import ConfigError, DataError, UserError, check_model_path, user_message
from tempnet.data.image_text import missing_files
from tempnet.train.inputs import check_hf_config_keys, create_checked


def test_hf_config_keys_accept_parameters_and_aliases_and_name_the_nearest():
    from transformers import GPT2Config, LlamaConfig

    check_hf_config_keys(GPT2Config, {"n_layer": 1, "hidden_size": 8, "resid_pdrop": 0.0}, "model.base")  # alias ok
    check_hf_config_keys(LlamaConfig, {"num_hidden_layers": 1, "rope_theta": 1e4, "torch_dtype": "float32",
                                       "output_hidden_states": False}, "model.base")  # legacy and base-class keys
    with pytest.raises(ConfigError, match=r"model.base.n_layers is not a parameter of GPT2Config; did you mean "
                                          r"model.base.n_layer\?"):
        check_hf_config_keys(GPT2Config, {"n_embd": 8, "n_layers": 1}, "model.base")
    with pytest.raises(ConfigError, match=r"model.base.lr is not a parameter of LlamaConfig; valid keys: \["):
        check_hf_config_keys(LlamaConfig, {"lr": 0.01}, "model.base")


def test_create_checked_names_the_users_key_and_keeps_other_type_errors():
    def build(width, depth=1):
        return width * depth

    assert create_checked(build, {"depth": 3}, "model.image.kwargs", "lib", lambda owner: ["width", "depth"], 2) == 6
    with pytest.raises(ConfigError, match=r"model.image.kwargs.dpth is not a parameter of lib's build; did you mean "
                                          r"model.image.kwargs.depth\?"):
        create_checked(build, {"dpth": 3}, "model.image.kwargs", "lib", lambda owner: ["width", "depth"], 2)

    def buggy(**kwargs):
        return len(None)  # a bug inside the library: a TypeError that is not about the user's keys

    with pytest.raises(TypeError, match="len"):
        create_checked(buggy, {"depth": 3}, "model.image.kwargs", "lib", lambda owner: [])

    def inner(width):
        return width

    def passes_its_own_bad_keyword(**kwargs):
        return inner(widht=1)  # the library's own bad keyword, not the user's

    with pytest.raises(TypeError, match="widht"):
        create_checked(passes_its_own_bad_keyword, {"depth": 3}, "model.image.kwargs", "lib", lambda owner: ["width"])


def test_missing_files_in_parallel(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(50)]
    for i, p in enumerate(paths):
        if i not in (3, 41):
            p.write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    assert missing_files(paths + [tmp_path / "dir.png"], workers=4) == [3, 41, 50]
    assert missing_files([]) == []


def test_a_missing_local_path_is_missing_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_model_path("gpt2", "model") == "gpt2" and check_model_path("org/model", "model") == "org/model"
    for local in ("./x", "/no/such", "a/b/c", "runs/final"):
        if local == "runs/final":
            (tmp_path / "runs").mkdir()  # the first directory exists here: a local path
        with pytest.raises(FileNotFoundError, match=f"model.path: no such file or directory: {local}"):
            check_model_path(local, "model.path")


def test_a_bad_yaml_override_names_its_key():
    assert parse_overrides(["optim.lr=0.001", "a.b=[1, 2]"]) == {"optim": {"lr": 1e-3}, "a": {"b": [1, 2]}}
    with pytest.raises(ConfigError, match=r"override optim.lr: its value '\[1' is not valid YAML"):
        parse_overrides(["optim.lr=[1"])
    with pytest.raises(ConfigError, match=r"override model.base: its value"):
        parse_overrides(["model.base={a: 1"])


def _data(*files, fmt="packed"):
    return SimpleNamespace(files=[str(f) for f in files], format=fmt, text_field="text")


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "is empty"),
    ("nul.txt", b"ab\ncd\x00", r"binary file, not text \(a NUL byte at offset 5\)"),
    ("latin.txt", "ok\nd\u00e9j\u00e0".encode("latin-1"), r"not UTF-8 text \(invalid byte at offset 4\)"),
    ("cut.txt", "ok \u00e9".encode()[:-1], "ends inside a multi-byte character"),
    ("blank.txt", b" \n\t\n", r"hold no text \(only whitespace\)"),
    ("bad.jsonl", b'{"text": "a"}\n\n{"text": "b"\n', r"line 3 of .*bad\.jsonl is not valid JSON"),
    ("num.jsonl", b'{"text": "a"}\n{"text": 1.5}\n', r"line 2 of .*: its 'text' is 1.5 \(float\), not a string"),
    ("list.jsonl", b'{"text": "a"}\n[1, 2]\n', r"line 2 of .* is not a JSON object"),
    ("nofield.jsonl", b'{"body": "a"}\n', r"line 1 of .* has no 'text' field \(data.text_field names it"),
    ("array.json", b'[{"text": "a"}, {"text": null}]', r"record 1 of .*array\.json: its 'text' is null"),
])
def test_bad_text_files_are_named_by_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        check_local_files(_data(tmp_path / name))


def test_good_text_files_pass(tmp_path):
    (tmp_path / "a.txt").write_text("caf\u00e9\n\nsecond line")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n\n{"text": "y", "other": 3}\n')
    (tmp_path / "c.json").write_text('[{"instruction": "do", "output": "done", "input": null}]')
    check_local_files(_data(tmp_path / "a.txt"))
    check_local_files(_data(tmp_path / "b.jsonl"))
    check_local_files(_data(tmp_path / "c.json", fmt="alpaca"))
    with pytest.raises(DataError, match="has no 'instruction' field"):
        check_local_files(_data(tmp_path / "b.jsonl", fmt="alpaca"))


def test_export_target_refuses_links_directories_and_special_files(tmp_path):
    from tempnet.integrations.export import check_output_file

    check_output_file(tmp_path / "new.safetensors")
    (tmp_path / "old.safetensors").write_bytes(b"x")
    check_output_file(tmp_path / "old.safetensors")  # a regular file is overwritten
    (tmp_path / "link").symlink_to(tmp_path / "old.safetensors")
    os.mkfifo(tmp_path / "fifo")
    for target, message in (("link", "symbolic link"), ("fifo", "special file"), (".", "a directory")):
        with pytest.raises(UserError, match=message):
            check_output_file(tmp_path / target)


def test_user_message_of_a_worker_error_is_the_original_line():
    wrapped = DataError("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 3, in f\n    raise DataError(m)\n"
                        "tempnet.errors.DataError: entry 7 of a.json: image missing\n")
    assert user_message(wrapped) == "entry 7 of a.json: image missing"
    assert user_message(FileNotFoundError("data.files: no such file(s) ['x']")) == "data.files: no such file(s) ['x']"
    assert user_message(UserError("two\nlines")) == "two lines"
