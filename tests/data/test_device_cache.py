"""DeviceCachedLoader on CPU: shapes, normalisation, seeded determinism, epochs, DDP shards, augmentation."""
import pytest
import torch

from vitlab.data.device_cache import DeviceCachedLoader

N, C, S = 40, 3, 8


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, C, S, S), dtype=torch.uint8, generator=g)
    labels = torch.arange(N)  # label = sample index, so batches say which samples they hold
    return images, labels


def loader(data, **kw):
    kw = {"batch_size": 8, "mean": (0.5,) * C, "std": (0.25,) * C, "train": True, "device": "cpu", **kw}
    return DeviceCachedLoader(*data, **kw)


def test_shapes_len_and_dtypes(data):
    dl = loader(data)
    batches = list(dl)
    assert len(dl) == len(batches) == N // 8
    x, y = batches[0]
    assert x.shape == (8, C, S, S) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_eval_is_ordered_and_normalised(data):
    images, labels = data
    dl = loader(data, train=False, batch_size=16)
    xs, ys = zip(*dl)
    assert len(dl) == 3 and [len(y) for y in ys] == [16, 16, 8]  # no dropped batch in eval
    assert torch.equal(torch.cat(ys), labels)
    expected = (images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(torch.cat(xs), expected)


def test_every_sample_once_per_epoch_and_reshuffled(data):
    dl = loader(data, drop_last=False)
    first = torch.cat([y for _, y in dl])
    second = torch.cat([y for _, y in dl])
    assert sorted(first.tolist()) == list(range(N)) == sorted(second.tolist())
    assert not torch.equal(first, second)  # a new order each epoch


def test_same_seed_same_batches(data):
    a, b, c = loader(data), loader(data), loader(data, seed=1)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(0), c.set_epoch(0)
    assert not torch.equal(next(iter(a))[1], next(iter(c))[1])


def test_two_ranks_split_the_epoch(data):
    shards = [torch.cat([y for _, y in loader(data, rank=r, world_size=2, drop_last=False)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == N // 2
    assert sorted(torch.cat(shards).tolist()) == list(range(N))
    odd = [loader(data, rank=r, world_size=3, drop_last=False) for r in range(3)]  # 40 -> 3 x 14, padded
    assert {o.shard_size for o in odd} == {14} and len({len(o) for o in odd}) == 1


def same(a, b):
    return torch.allclose(a, b, atol=1e-3)  # pixel values back from (x / 255 - 0) / (1 / 255)


def test_crop_and_flip_keep_content(data):
    images, labels = data
    dl = loader(data, pad=0, flip=True, batch_size=N, drop_last=False, mean=(0.0,) * C, std=(1 / 255,) * C)
    x, y = next(iter(dl))
    src = images[y].float()
    flipped = [same(x[i], src[i].flip(-1)) for i in range(N)]
    assert all(f or same(x[i], src[i]) for i, f in enumerate(flipped)) and 0 < sum(flipped) < N
    dl = loader(data, pad=2, flip=False, batch_size=N, mean=(0.0,) * C, std=(1 / 255,) * C)
    x, y = next(iter(dl))
    for i in range(N):  # each output is a window of the zero-padded source
        padded = torch.nn.functional.pad(images[y[i]].float(), (2, 2, 2, 2))
        windows = padded.unfold(1, S, 1).unfold(2, S, 1)  # (C, 5, 5, S, S)
        assert any(same(windows[:, r, c], x[i]) for r in range(5) for c in range(5))


def test_random_erasing_fills_one_rectangle_with_noise(data):
    plain = loader(data, pad=0, flip=False, batch_size=N)
    erased = loader(data, pad=0, flip=False, batch_size=N, erase=1.0)
    (x, y), (xe, ye) = next(iter(plain)), next(iter(erased))
    assert torch.equal(y, ye)  # same order: only the erasing differs
    changed = (x != xe).any(dim=1)  # (N, S, S)
    for i in range(N):
        rows, cols = changed[i].any(1).nonzero(), changed[i].any(0).nonzero()
        assert len(rows) and len(cols), f"image {i} not erased with erase=1"
        box = changed[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.9  # one filled rectangle (noise may equal a pixel by chance)
        assert box.numel() <= S * S * 0.5  # at most 1/3 of the area, plus rounding at this tiny size
    assert (xe[changed.unsqueeze(1).expand_as(xe)]).std() > 0.5  # normal noise in normalised units
    again = next(iter(loader(data, pad=0, flip=False, batch_size=N, erase=1.0)))[0]
    assert torch.equal(again, xe)  # seeded like the rest of the augmentation
    half = loader(data, pad=0, flip=False, batch_size=N, erase=0.5)
    share = (next(iter(half))[0] != x).flatten(1).any(1).float().mean()
    assert 0.15 < share < 0.85
    evaluation = [next(iter(loader(data, train=False, batch_size=N, erase=e)))[0] for e in (1.0, 0.0)]
    assert torch.equal(*evaluation)  # evaluation batches are never erased
    with pytest.raises(ValueError, match="erase must be a probability in \\[0, 1\\], got 1.5"):
        loader(data, erase=1.5)


def test_channels_and_resize(data):
    images, labels = data
    gray = DeviceCachedLoader(images[:, :1], labels, 8, (0.0,) * 3, (1.0,) * 3, train=False, device="cpu",
                              in_chans=3, img_size=16)
    x, _ = next(iter(gray))
    assert x.shape == (8, 3, 16, 16) and torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError, match="uint8"):
        DeviceCachedLoader(images.float(), labels, 8, (0.0,) * 3, (1.0,) * 3, train=False, device="cpu")


@pytest.mark.gpu
def test_on_cuda_matches_cpu_eval(data):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x_cpu = torch.cat([x for x, _ in loader(data, train=False)])
    x_gpu = torch.cat([x for x, _ in loader(data, train=False, device="cuda")])
    assert x_gpu.is_cuda
    torch.testing.assert_close(x_gpu.cpu(), x_cpu)
    xb, yb = next(iter(loader(data, device="cuda")))
    assert xb.is_cuda and yb.is_cuda and xb.shape == (8, C, S, S)
