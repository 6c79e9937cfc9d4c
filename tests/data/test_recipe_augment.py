"""The recipes' augmentations in the per-image loaders: timm's RandAugment strings and DeiT's repeated augmentation."""
from collections import Counter

import pytest
import torch

from vitlab.data import CIFAR10DataModule, ImageFolderDataModule
from vitlab.data.resumable import ResumableDataLoader, SeededSampler
from vitlab.data.transforms import auto_augment_transform


class Keyed(torch.utils.data.Dataset):
    """Sample i -> (i, a random number drawn while the loader seeds it): shows which key got which seed."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return i, torch.rand(()).item()


def test_repeated_aug_deals_copies_to_processes_as_timm_and_keeps_the_epoch_length():
    from timm.data.distributed_sampler import RepeatAugSampler

    data = Keyed()
    for world in (1, 2, 3):
        ours = [[k[0] for k in SeededSampler(data, world, r, seed=5, repeats=3)] for r in range(world)]
        for r, keys in enumerate(ours):
            assert len(keys) == -(-len(data) // world)  # ceil(n / world): the epoch keeps its length
        flat = [i for keys in ours for i in keys]
        counts = Counter(flat)
        assert max(counts.values()) <= 3 and len(counts) < len(data)  # fewer distinct images, each up to 3 times
        if world == 3:  # copies go to three different processes, as timm's RepeatAugSampler deals them
            for i in range(len(ours[0])):
                assert ours[0][i] == ours[1][i] == ours[2][i]
            timm_first = [list(RepeatAugSampler(data, 3, r, shuffle=False, num_repeats=3, selected_round=0))
                          for r in range(3)]
            ordered = [[k[0] for k in SeededSampler(data, 3, r, shuffle=False, repeats=3)] for r in range(3)]
            assert ordered == [t[:len(o)] for t, o in zip(timm_first, ordered)]


def test_repeated_copies_are_augmented_apart_and_resume_exactly():
    data = Keyed()
    sampler = SeededSampler(data, 1, 0, seed=3, repeats=2)
    loader = ResumableDataLoader(data, batch_size=4, sampler=sampler)
    batches = [b for b in loader]
    index, draw = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert index[0] == index[1] and draw[0] != draw[1]  # the two copies of one image: different random draws
    # resume after 1 batch: the remaining batches are the same
    again = ResumableDataLoader(data, batch_size=4, sampler=SeededSampler(data, 1, 0, seed=3, repeats=2))
    again.load_state_dict({"epoch": 0, "batches": 1, "seed": 3})
    rest = [b for b in again]
    assert len(rest) == len(batches) - 1
    for a, b in zip(rest, batches[1:]):
        torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_repeated_aug_rejects_bad_values(cifar_root, bad):
    with pytest.raises(ValueError, match="repeated_aug"):
        CIFAR10DataModule(data_dir=str(cifar_root), repeated_aug=bad)


def test_repeated_aug_is_refused_on_the_device_path(cifar_root):
    with pytest.raises(ValueError, match="repeated_aug=3 is for the per-image loader"):
        CIFAR10DataModule(data_dir=str(cifar_root), repeated_aug=3, on_device=True)


def test_image_folder_trains_with_repeated_aug(image_folder_root):
    dm = ImageFolderDataModule(data_dir=str(image_folder_root), img_size=16, batch_size=4, num_workers=0,
                               repeated_aug=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == len(dm.train_set) - len(dm.train_set) % 4 or len(labels) == len(dm.train_set)


def test_randaugment_in_the_per_image_cifar_loader(cifar_root):
    kw = dict(data_dir=str(cifar_root), batch_size=8, num_workers=0, val_split=8)
    plain, randaug = CIFAR10DataModule(**kw), CIFAR10DataModule(**kw, auto_augment="rand-m9-mstd0.5-inc1")
    images = {}
    for name, dm in (("plain", plain), ("rand", randaug)):
        torch.manual_seed(0)
        dm.setup("fit")
        images[name] = torch.stack([dm.train_set[i][0] for i in range(16)])  # (16, 3, 32, 32)
    assert images["rand"].shape == images["plain"].shape
    assert not torch.allclose(images["rand"], images["plain"])  # RandAugment changed some images
    # eval is untouched by it
    torch.testing.assert_close(plain.val_set[0][0], randaug.val_set[0][0])


def test_trivialaugment_string_and_bad_strings_named(cifar_root):
    assert auto_augment_transform("rand-n1-m10-mstd101", 32, (0.5, 0.5, 0.5)) is not None
    with pytest.raises(ValueError, match="auto_augment='bogus-m9'"):
        CIFAR10DataModule(data_dir=str(cifar_root), auto_augment="bogus-m9")
