import pytest
import torch
from data_files import write_fashion_mnist

from vitlab.data import CIFAR10DataModule, FashionMNISTDataModule
from vitlab.data.base import default_num_workers


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"in_chans": 2}, "in_chans"),
        ({"in_chans": 4}, "4"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_split": 1.5}, "1.5"),
        ({"val_split": -1}, "-1"),
        ({"img_size": -3}, "-3"),
        ({"train_subset": 0}, "train_subset"),
    ],
)
def test_bad_arguments_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        CIFAR10DataModule(**kwargs)


def test_num_classes_before_setup_and_defaults(monkeypatch):
    dm = CIFAR10DataModule()
    assert dm.num_classes == 10 and dm.img_size == 32 and dm.in_chans == 3
    assert dm.num_workers == default_num_workers() <= 8
    assert dm.pin_memory == torch.cuda.is_available()


def test_val_split_larger_than_train_is_named(tmp_path):
    write_fashion_mnist(tmp_path, n_train=10)
    with pytest.raises(ValueError, match="val_split=10"):
        FashionMNISTDataModule(data_dir=str(tmp_path), val_split=10, num_workers=0).setup("fit")


def test_val_split_zero_validates_on_test(tmp_path):
    write_fashion_mnist(tmp_path, n_train=20, n_test=6)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_split=0, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 20 and dm.val_set is dm.test_set and len(dm.val_set) == 6


def test_batch_larger_than_train_set_still_yields_a_batch(tmp_path):
    write_fashion_mnist(tmp_path, n_train=20)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=128, num_workers=0)
    dm.setup("fit")
    with pytest.warns(UserWarning, match="batch_size=128"):
        batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0][0].shape == (18, 1, 28, 28)


def test_worker_processes_work(tmp_path):
    write_fashion_mnist(tmp_path, n_train=20)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=4, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    assert sum(len(y) for _, y in loader) == 16


@pytest.mark.parametrize("text, value", [("5000", 5000), ("0.2", 0.2), ("0", 0)])
def test_cli_parses_val_split_as_count_or_fraction(text, value):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(CIFAR10DataModule, "data")
    parsed = parser.parse_args(["--data.val_split", text]).data.val_split
    assert parsed == value and type(parsed) is type(value)
