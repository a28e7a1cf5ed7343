"""Datasets for the objectives: IDX files (MNIST / Fashion-MNIST format) with their official split."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from archdsl.search.data import IDX_FILES, load_dataset, read_idx
from archdsl.search.errors import SearchError


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    (gzip.open if compress else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(folder, train: int = 30, test: int = 10, compress: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (train, 6, 5)),
        "train_labels": np.arange(train) % 3,
        "test_images": rng.integers(0, 256, (test, 6, 5)),
        "test_labels": np.arange(test) % 3,
    }
    for key, stem in IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if compress else "")), arrays[key], compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_an_idx_file_reads_back_exactly(tmp_path, compress):
    array = np.random.default_rng(1).integers(0, 256, (4, 3, 2)).astype(np.uint8)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, array, compress)
    assert np.array_equal(read_idx(path), array)


def test_an_idx_folder_keeps_the_official_split(tmp_path):
    arrays = write_idx_dataset(tmp_path)
    data = load_dataset(tmp_path)
    assert data.images.shape == (40, 6, 5, 1) and data.num_classes == 3
    train, test = data.train_test()
    assert np.array_equal(test, np.arange(30, 40)) and np.array_equal(train, np.arange(30))
    assert np.array_equal(data.images[test, ..., 0], arrays["test_images"])
    assert np.array_equal(data.labels[test], arrays["test_labels"])
    # a search's validation images come from the training part only
    search_train, validation = data.split(seed=0)
    assert set(validation) | set(search_train) == set(range(30))
    assert not set(validation) & set(search_train)


def test_a_training_subset_keeps_each_class_alike_and_the_test_split_whole(tmp_path):
    arrays = write_idx_dataset(tmp_path)
    data = load_dataset(tmp_path)
    subset = data.with_training_images(12, seed=0)
    train, test = subset.train_test()
    assert len(train) == 12 and np.bincount(subset.labels[train]).tolist() == [4, 4, 4]
    assert np.array_equal(subset.images[test, ..., 0], arrays["test_images"])
    # every kept training image is one of the originals, with its label
    originals = {data.images[i].tobytes(): data.labels[i] for i in data.train_test()[0]}
    assert all(originals[subset.images[i].tobytes()] == subset.labels[i] for i in train)
    assert np.array_equal(data.with_training_images(12, seed=0).images, subset.images)  # fixed by the seed
    assert not np.array_equal(data.with_training_images(12, seed=1).images, subset.images)
    for count in (5, 31):  # fewer than 2 of each class; more than there are
        with pytest.raises(SearchError, match=rf"--train-images {count}: give between 6 .* and the 30 training images"):
            data.with_training_images(count)


def test_grey_images_are_repeated_on_three_channels(tmp_path):
    write_idx_dataset(tmp_path, compress=False)
    images, labels = load_dataset(tmp_path).batch(np.arange(4), (12, 10), channels=3)
    assert images.shape == (4, 3, 12, 10) and labels.tolist() == [0, 1, 2, 0]
    assert np.array_equal(images[:, 0], images[:, 1]) and np.array_equal(images[:, 0], images[:, 2])


def test_idx_files_whose_counts_disagree_are_one_located_error(tmp_path):
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / (IDX_FILES["test_labels"] + ".gz"), np.zeros(7), compress=True)
    with pytest.raises(SearchError) as caught:
        load_dataset(tmp_path)
    assert str(caught.value) == (
        f"--dataset {tmp_path}: the test IDX files disagree: images (10, 6, 5), labels (7,) "
        f"(expected [N, H, W] images and N labels)"
    )


def test_a_truncated_or_foreign_idx_file_is_refused(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 3, 0, 0, 0, 3]) + bytes(5))
    with pytest.raises(SearchError, match="declares 3x3 = 9 bytes of data, but the file holds 5"):
        read_idx(path)
    path.write_bytes(b"P5\n3 3\n255\n" + bytes(9))
    with pytest.raises(SearchError, match="not an IDX file of unsigned bytes"):
        read_idx(path)


def test_a_folder_with_no_images_says_what_a_dataset_is(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(SearchError, match="no images .* in the class folders cats"):
        load_dataset(tmp_path)


def test_the_final_stage_trains_on_the_training_split_and_scores_the_official_test_split(tmp_path, monkeypatch):
    import torch
    from torch import nn

    from archdsl.search import training
    from archdsl.search.objectives import TrialContext

    write_idx_dataset(tmp_path, train=40, test=10)
    data = load_dataset(tmp_path)
    scored, trained = [], []
    monkeypatch.setattr(training, "evaluate", lambda model, data, index, context: scored.append(index) or 0.5)
    original_batch = type(data).batch
    monkeypatch.setattr(
        type(data), "batch", lambda self, index, *args, **kw: trained.append(index) or original_batch(self, index, *args, **kw)
    )
    context = TrialContext(torch.device("cpu"), (6, 5), 1, data, batch_size=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 3))
    training.ShortTraining(epochs=1, test_split=True).train(model, context)
    assert [index.tolist() for index in scored] == [list(range(40, 50))]
    assert set(np.concatenate(trained)) <= set(range(40)) and len(np.concatenate(trained)) == 40
    scored.clear()
    training.ShortTraining(epochs=1).train(model, context)  # a search trial validates on training images
    assert set(scored[0]) < set(range(40))
