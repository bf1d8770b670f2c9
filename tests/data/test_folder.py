"""The folder:DIR dataset on PNG and JPEG files written here: classes, splits, decoding, its
evaluation view, and the errors naming what is missing or broken."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from normlab.data import IMAGENET_STATS, ImageFolder, decode_image, load_data, scan_folder
from normlab.data.augment import normalize, resize_center_crop, to_uint8_tensor
from normlab.data.folder import spread

from .images import write_folder, write_image


def test_classes_splits_and_labels(tmp_path):
    write_folder(tmp_path, classes=("emu", "cat", "dog"))
    classes, samples = scan_folder(tmp_path, "train")
    assert classes == ("cat", "dog", "emu")  # sorted
    assert len(samples) == 12
    assert [label for _, label in samples] == [0] * 4 + [1] * 4 + [2] * 4
    assert [p.name for p, _ in samples[:4]] == ["000.png", "001.jpg", "002.JPEG", "003.png"]
    assert all(p.parent.parent.name == "train" for p, _ in samples)
    for split in ("test", "val"):
        classes_val, val = scan_folder(tmp_path, split)
        assert classes_val == classes
        assert len(val) == 6
        assert all(p.parent.parent.name == "val" for p, _ in val)
    with pytest.raises(ValueError, match=r"unknown split 'valid'.*Did you mean 'val'"):
        scan_folder(tmp_path, "valid")


def test_non_images_nested_folders_and_hidden_files_are_ignored(tmp_path):
    write_folder(tmp_path)
    _, samples = scan_folder(tmp_path, "train")
    names = {p.name for p, _ in samples}
    assert not names & {"notes.txt", ".DS_Store", "deep.png", "README.md"}


def test_decoding_png_is_exact_and_everything_becomes_rgb(tmp_path):
    pixels = write_image(tmp_path / "a.png", 7, 5, seed=3)
    image = decode_image(tmp_path / "a.png")
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), pixels)
    grey = write_image(tmp_path / "g.png", 6, 4, seed=4, mode="L")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "g.png")), np.stack([grey] * 3, -1))
    write_image(tmp_path / "j.jpg", 16, 16, seed=5)
    assert decode_image(tmp_path / "j.jpg").size == (16, 16)


def test_load_data_serves_the_evaluation_view(tmp_path):
    write_folder(tmp_path)
    data = load_data(f"folder:{tmp_path}", "test")
    assert isinstance(data, ImageFolder)
    assert (len(data), data.num_classes, data.input_shape) == (6, 3, (3, 224, 224))
    x, label = data[3]
    assert x.dtype == torch.float32
    assert label == 1
    mean = torch.tensor(IMAGENET_STATS[0]).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STATS[1]).view(3, 1, 1)
    image = resize_center_crop(Image.open(data.samples[3][0]).convert("RGB"), 224)
    assert torch.equal(x, normalize(to_uint8_tensor(image)[None], mean, std)[0])
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    small = ImageFolder(tmp_path, "train", image_size=16)
    assert small[0][0].shape == (3, 16, 16)


def test_limit_spreads_over_the_classes(tmp_path):
    write_folder(tmp_path)
    data = load_data(f"folder:{tmp_path}", "train", limit=3)
    assert data.labels.tolist() == [0, 1, 2]
    assert spread(12, 3) == [0, 6, 11]
    assert spread(5, None) == spread(5, 9) == [0, 1, 2, 3, 4]


def test_missing_directory_and_split_folders(tmp_path):
    with pytest.raises(ValueError, match=r"folder: directory .*nowhere.* does not exist"):
        load_data(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match=r"the train/ folder is missing .*expected DIR/train"):
        load_data(f"folder:{tmp_path}")
    write_folder(tmp_path, per_class={"train": 1})
    assert len(load_data(f"folder:{tmp_path}", "train")) == 3
    with pytest.raises(ValueError, match=r"the val/ folder is missing \(.*val\)"):
        load_data(f"folder:{tmp_path}", "test")
    with pytest.raises(ValueError, match=r"folder needs its directory, as 'folder:DIR'"):
        load_data("folder")
    with pytest.raises(ValueError, match=r"unknown dataset 'foldr'.*Did you mean 'folder'"):
        load_data("foldr:/x")


def test_class_folder_errors(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match=r"train has no class folders"):
        scan_folder(tmp_path)
    write_folder(tmp_path)
    (tmp_path / "val" / "emu" / "000.png").rename(tmp_path / "000.png")
    (tmp_path / "val" / "emu" / "001.jpg").unlink()
    with pytest.raises(ValueError, match=r"class folder .*val/emu holds no image \(\.jpg"):
        scan_folder(tmp_path, "val")
    for path in (tmp_path / "val" / "emu").iterdir():
        path.unlink()
    (tmp_path / "val" / "emu").rmdir()
    (tmp_path / "val" / "yak").mkdir()
    with pytest.raises(ValueError, match=r"missing: \['emu'\], not in train/: \['yak'\]"):
        scan_folder(tmp_path, "val")


def test_undecodable_files_are_named(tmp_path):
    write_folder(tmp_path)
    broken = tmp_path / "train" / "dog" / "001.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = ImageFolder(tmp_path, "train")  # decoding is lazy: listing works
    with pytest.raises(ValueError, match=r"dog/001\.jpg: not a decodable JPEG or PNG image"):
        data[5]
    truncated = tmp_path / "train" / "dog" / "000.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"dog/000\.png: not a decodable"):
        data[4]
    assert data[0][0].shape == (3, 224, 224)  # the others still decode
