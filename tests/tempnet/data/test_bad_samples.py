"""Bad training images: `on_bad_sample=error` names the entry, `skip` serves the next readable entry under
the bad one's ids (the same in every process and every run), counts it, and stops past max_bad_fraction."""

import json

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tempnet.data.image_text import ImageTextPairs
from tempnet.data.image_transforms import eval_transform
from tempnet.errors import UserError, user_message


def _set(tmp_path, n=6, corrupt=(), truncated=(), missing=()):
    entries = []
    for i in range(n):
        name = f"{i}.png"
        if i in corrupt:
            (tmp_path / name).write_bytes(b"\x89PNG not really")
        elif i not in missing:
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / name)
            if i in truncated:
                data = (tmp_path / name).read_bytes()
                (tmp_path / name).write_bytes(data[: len(data) // 2])
        entries.append({"image": name, "caption": f"caption {i}"})
    (tmp_path / "train.json").write_text(json.dumps(entries))
    return tmp_path / "train.json"


def test_error_names_the_entry_and_the_file(tmp_path):
    ds = ImageTextPairs(_set(tmp_path, corrupt=[2]), tmp_path, eval_transform(8))
    ds[1]
    with pytest.raises(UserError, match=r"entry 2 of .*train\.json .*2\.png.*on_bad_sample=skip"):
        ds[2]


def test_skip_serves_the_next_readable_entry_under_the_bad_ones_ids(tmp_path):
    ann = _set(tmp_path, corrupt=[2], truncated=[3])
    ds = ImageTextPairs(ann, tmp_path, eval_transform(8), on_bad_sample="skip", max_bad_fraction=0.5)
    image, caption, image_id, text_id = ds[2]
    assert caption == "caption 4" and (image_id, text_id) == (2, 2)  # 3 is truncated too: the next readable is 4
    assert torch.equal(image, ds[4][0]) and ds.num_bad() == 2
    assert ds[3][1] == "caption 4" and ds[5][1] == "caption 5"
    (tmp_path / "w").mkdir()
    wrap = ImageTextPairs(_set(tmp_path / "w", corrupt=[5]), tmp_path / "w", eval_transform(8), on_bad_sample="skip",
                          max_bad_fraction=0.5)
    assert wrap[5][1:] == ("caption 0", 5, 5)  # wraps around to entry 0


def test_skip_is_the_same_with_loader_workers_and_counts_their_finds(tmp_path):
    ann = _set(tmp_path, n=8, corrupt=[1, 6])
    ds = ImageTextPairs(ann, tmp_path, eval_transform(8), on_bad_sample="skip", max_bad_fraction=0.5)
    serial = [ds[i][1] for i in range(8)]
    fresh = ImageTextPairs(ann, tmp_path, eval_transform(8), on_bad_sample="skip", max_bad_fraction=0.5)
    loaded = [c for batch in DataLoader(fresh, batch_size=2, num_workers=2) for c in batch[1]]
    assert loaded == serial == ["caption 0", "caption 2", "caption 2", "caption 3", "caption 4", "caption 5",
                                "caption 7", "caption 7"]
    assert fresh.num_bad() == 2  # marked by the workers, seen by the main process


def test_missing_files_found_at_start_and_the_fraction_limit(tmp_path):
    ann = _set(tmp_path, n=10, missing=[4])
    with pytest.raises(UserError, match=r"1 of 10 image files not found, the first: entry 4 .*4\.png"):
        ImageTextPairs(ann, tmp_path, eval_transform(8))
    ds = ImageTextPairs(ann, tmp_path, eval_transform(8), on_bad_sample="skip", max_bad_fraction=0.1)
    assert ds.num_bad() == 1 and ds[4][1] == "caption 5"
    with pytest.raises(UserError, match=r"1 of 10 entries .* more than data.max_bad_fraction=0.05"):
        ImageTextPairs(ann, tmp_path, eval_transform(8), on_bad_sample="skip", max_bad_fraction=0.05)
    (tmp_path / "7.png").write_bytes(b"")
    ds = ImageTextPairs(ann, tmp_path, eval_transform(8), on_bad_sample="skip", max_bad_fraction=0.1)
    with pytest.raises(UserError, match=r"2 of 10 entries .*the last: .*entry 7"):
        ds[7]  # the second bad entry, found when read, passes the limit


def test_a_worker_error_is_one_line(tmp_path):
    ds = ImageTextPairs(_set(tmp_path, corrupt=[0]), tmp_path, eval_transform(8))
    with pytest.raises(UserError) as info:
        next(iter(DataLoader(ds, batch_size=2, num_workers=1)))
    assert "Original Traceback" in str(info.value)  # torch re-raised it with the worker's traceback ...
    line = user_message(info.value)  # ... which the entry points drop
    assert line.startswith("cannot read the image file of entry 0 of ") and "\n" not in line, line


def test_the_policy_counts_distinct_ids_and_checks_its_settings():
    """The one policy of every CLIP training set (tempnet.data.bad_samples): an id counts once however often it
    is met, in one call or many; the fraction and the settings are checked where the config checks them."""
    from tempnet.data.bad_samples import BadSample, BadSamples, check_policy

    bad = BadSamples("skip", num_ids=20, data_size=20, max_fraction=0.5)
    bad.add([3, 3, 4, 17], "first")
    bad.add(4, "again")
    assert len(bad) == 3 and 4 in bad and 17 in bad and 5 not in bad
    with pytest.raises(BadSample, match=r"^11 of 20 samples are bad, more than data.max_bad_fraction=0.5; the last: x$"):
        bad.add(range(10), "x")  # 0..9 holds 3 and 4 already: 8 new
    with pytest.raises(ValueError, match=r"data.on_bad_sample must be 'error' or 'skip', got 'ignore'"):
        check_policy("ignore", 0.1)
    with pytest.raises(ValueError, match=r"data.max_bad_fraction must lie in \[0, 1\], got 2"):
        BadSamples("skip", 4, 4, 2)
