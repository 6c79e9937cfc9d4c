"""The teacher's logits cached across epochs (``model.distill.cache``): the same logits as running the teacher,
the teacher skipped for images seen before, and the cache off by itself when augmentations change the images."""
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from vitlab.training import ImageClassifier
from vitlab.training.teacher_cache import TeacherCache

TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=7, img_size=28, in_chans=1,
            num_classes=10, distilled=True)


class CountingTeacher(torch.nn.Module):
    """A tiny frozen linear teacher that counts the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)
        self.seen = 0
        self.num_classes = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.fc(x.flatten(1))


def test_keys_depend_on_content_only():
    cache = TeacherCache()
    x = torch.rand(6, 1, 28, 28)
    keys = cache.keys(x)
    assert len(set(keys)) == 6
    assert cache.keys(x[[3, 1]]) == [keys[3], keys[1]]  # the same image in another batch, another position
    y = x.clone()
    y[2, 0, 5, 5] += 1e-3
    assert cache.keys(y)[2] != keys[2] and cache.keys(y)[0] == keys[0]


def test_lookup_equals_the_teacher_and_skips_seen_images():
    cache, teacher = TeacherCache(), CountingTeacher()
    x = torch.rand(8, 1, 28, 28)
    first = cache.lookup(x[:5], teacher)
    mixed = cache.lookup(x[3:], teacher)  # 2 seen, 3 new
    assert teacher.seen == 5 + 3
    with torch.no_grad():
        torch.testing.assert_close(first, teacher.fc(x[:5].flatten(1)))
        torch.testing.assert_close(mixed, teacher.fc(x[3:].flatten(1)))
    assert (cache.hits, cache.misses) == (2, 8)


def test_room_bounds_the_cache():
    cache = TeacherCache(max_bytes=3 * 10 * 4)  # three rows of 10 float32 logits
    cache.lookup(torch.rand(5, 1, 28, 28), CountingTeacher())
    assert len(cache.store) == 3


def _fit(epochs: int, flip: bool, cache: bool = True) -> tuple[ImageClassifier, CountingTeacher]:
    torch.manual_seed(0)
    module = ImageClassifier(arch=TINY, distill={"teacher": "resnet10t", "cache": cache},
                             schedule={"warmup_epochs": 0.0})
    teacher = CountingTeacher().eval().requires_grad_(False)
    module.distiller._teacher = teacher
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)

    class Flip(TensorDataset):  # a random flip and shift (32 variants per image): new images every epoch
        def __getitem__(self, i):
            img, label = super().__getitem__(i)
            img = img.roll(tuple(torch.randint(0, 4, (2,)).tolist()), dims=(-2, -1))
            return (img.flip(-1) if torch.rand(()) < 0.5 else img), label

    data = DataLoader((Flip if flip else TensorDataset)(x, y), batch_size=8, shuffle=True)
    L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, data)
    return module, teacher


def test_fit_runs_the_teacher_once_per_image_without_augmentation_with_the_same_result():
    cached, teacher = _fit(epochs=3, flip=False)
    assert teacher.seen == 32  # epochs 2 and 3 came from the cache
    uncached, teacher = _fit(epochs=3, flip=False, cache=False)
    assert teacher.seen == 3 * 32
    for (name, a), b in zip(cached.model.state_dict().items(), uncached.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)  # the cache changes nothing but the teacher's work


def test_the_cache_switches_itself_off_under_random_augmentation():
    module, teacher = _fit(epochs=3, flip=True)
    cache = module.distiller.cache
    assert not cache.enabled and not cache.store
    assert teacher.seen > 2.5 * 32  # epoch 3 ran the teacher on every image
