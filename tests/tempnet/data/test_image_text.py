"""Image-text data: ALBEF JSON parsing, clear errors naming the bad item, seeded augmentation,
the synthetic generator, zero-shot folders."""

import json

import pytest
import torch
from PIL import Image

from tempnet.data.image_text import ImageTextPairs, RetrievalSet, pre_caption
from tempnet.errors import UserError
from tempnet.data.image_transforms import eval_transform, train_transform
from tempnet.data.synthetic_image_text import COLOURS, make_synthetic_image_text
from tempnet.data.zeroshot_sets import build_zeroshot_set


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_image_text(tmp_path_factory.mktemp("synth"), num_train=24, num_retrieval=6,
                                     zeroshot_per_class=2, image_size=32)


def _write(tmp_path, entries, name="ann.json"):
    path = tmp_path / name
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


def test_pre_caption():
    assert pre_caption("A  Dog-running (fast)! It's", 30) == "a dog running fast its"
    assert pre_caption("one two three four", 2) == "one two"


def test_pairs_items_and_ids(synth):
    ds = ImageTextPairs(synth / "train.json", synth, eval_transform(16))
    image, caption, image_id, text_id = ds[5]
    assert image.shape == (3, 16, 16) and isinstance(caption, str) and caption
    assert (image_id, text_id) == (5, 5) and ds.num_images == len(ds) == 24


def test_shared_image_ids(tmp_path, synth):
    img = str(synth / "train/00000.png")
    path = _write(tmp_path, [{"image": img, "caption": "a", "image_id": "x"}, {"image": img, "caption": "b", "image_id": "y"},
                             {"image": img, "caption": "c", "image_id": "x"}])
    ds = ImageTextPairs(path, "/", eval_transform(8))
    assert ds.image_ids.tolist() == [0, 1, 0] and ds.num_images == 2


def test_augmentation_is_a_function_of_seed_epoch_index(synth):
    ds = ImageTextPairs(synth / "train.json", synth, train_transform(16), seed=3)
    torch.manual_seed(0)
    a = ds[2][0]
    torch.manual_seed(123)  # the global RNG does not matter ...
    assert torch.equal(a, ds[2][0])
    before = torch.get_rng_state()
    ds[3]
    assert torch.equal(before, torch.get_rng_state())  # ... and is left untouched
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2][0])  # a new epoch draws a new augmentation


def test_missing_image_names_the_entry(tmp_path):
    path = _write(tmp_path, [{"image": "nowhere/x.png", "caption": "a red circle"}])
    with pytest.raises(UserError, match=r"1 of 1 image files not found.*entry 0 of .*ann\.json.*nowhere/x\.png"):
        ImageTextPairs(path, tmp_path, eval_transform(8))  # found by the start-of-run stat
    ds = ImageTextPairs(path, tmp_path, eval_transform(8), check_files=False)
    with pytest.raises(UserError, match=r"entry 0 of .*ann\.json.*nowhere/x\.png"):
        ds[0]  # or when read


def test_unreadable_image_names_the_entry(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    path = _write(tmp_path, [{"image": "bad.png", "caption": "a red circle"}])
    with pytest.raises(ValueError, match=r"entry 0 of .*bad\.png"):
        ImageTextPairs(path, tmp_path, eval_transform(8))[0]


@pytest.mark.parametrize("caption", ["", "   ", "?!.", None, 3])
def test_empty_or_bad_caption_names_the_entry(tmp_path, caption):
    path = _write(tmp_path, [{"image": "a.png", "caption": "fine"}, {"image": "b.png", "caption": caption}])
    with pytest.raises(ValueError, match=r"entry 1 of .*ann\.json"):
        ImageTextPairs(path, tmp_path, eval_transform(8))


def test_unreadable_json_names_the_file(tmp_path):
    path = _write(tmp_path, '[{"image": "a.png", "caption": "x"},', name="broken.json")
    with pytest.raises(ValueError, match=r"cannot parse annotation file .*broken\.json"):
        ImageTextPairs(path, tmp_path, eval_transform(8))
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        ImageTextPairs(tmp_path / "absent.json", tmp_path, eval_transform(8))
    with pytest.raises(ValueError, match=r"entry 0 of .* no \"image\""):
        ImageTextPairs(_write(tmp_path, [{"caption": "x"}]), tmp_path, eval_transform(8))
    with pytest.raises(ValueError, match="non-empty JSON list"):
        ImageTextPairs(_write(tmp_path, {"image": "a"}), tmp_path, eval_transform(8))


def test_retrieval_set(synth, tmp_path):
    split = RetrievalSet(synth / "retrieval.json", synth)
    assert len(split.images) == 6 and len(split.texts) == 12
    assert split.txt2img.tolist() == [i // 2 for i in range(12)]
    image, index = split.image_dataset(eval_transform(16))[4]
    assert image.shape == (3, 16, 16) and index == 4
    with pytest.raises(ValueError, match=r"entry 0 of .*empty caption"):
        RetrievalSet(_write(tmp_path, [{"image": "a.png", "caption": ["ok", ""]}]), tmp_path)


def test_synthetic_set_is_deterministic_and_cached(synth, tmp_path):
    again = make_synthetic_image_text(tmp_path / "b", num_train=24, num_retrieval=6, zeroshot_per_class=2, image_size=32)
    assert (synth / "train.json").read_text() == (again / "train.json").read_text()
    assert (synth / "train" / "00007.png").read_bytes() == (again / "train" / "00007.png").read_bytes()
    stamp = (again / "train.json").stat().st_mtime_ns
    make_synthetic_image_text(again, num_train=24, num_retrieval=6, zeroshot_per_class=2, image_size=32)
    assert (again / "train.json").stat().st_mtime_ns == stamp  # an identical set is not rewritten
    captions = {e["caption"] for e in json.loads((synth / "train.json").read_text())}
    assert all(any(c in cap for c in COLOURS) for cap in captions)
    with Image.open(synth / "retrieval" / "00000.png") as img:
        assert img.size == (32, 32)


def test_zeroshot_folder(synth, tmp_path):
    dataset, names, templates = build_zeroshot_set("folder", synth / "zeroshot", eval_transform(16))
    assert names == sorted(COLOURS) and len(dataset) == 2 * len(COLOURS)
    assert all(t.count("{}") == 1 for t in templates)
    image, label = dataset[3]
    assert image.shape == (3, 16, 16) and names[label] == dataset.classes[label]
    with pytest.raises(ValueError, match="exactly one"):
        build_zeroshot_set("folder", synth / "zeroshot", eval_transform(16), templates=["no slot"])
    with pytest.raises(FileNotFoundError, match="cifar10 folder not found"):
        build_zeroshot_set("cifar10", tmp_path / "nothing", eval_transform(16))
    with pytest.raises(FileNotFoundError, match="no cifar100 test split"):
        build_zeroshot_set("cifar100", tmp_path, eval_transform(16))
    with pytest.raises(ValueError, match="unknown zero-shot kind"):
        build_zeroshot_set("mnist", tmp_path, eval_transform(16))
