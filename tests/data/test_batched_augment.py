"""The batched on-device RandAugment against timm's PIL RandAugment: config parsing, level functions, each op on
single images, per-sample randomness, seeding, statistics, and its place in DeviceCachedLoader."""
import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment

from vitlab.data.batched_augment import SUPPORTED_OPS, BatchedRandAugment, level_to_arg, rand_augment_spec
from vitlab.data.device_cache import DeviceCachedLoader
from vitlab.data.resumable import sample_seed
from vitlab.data.transforms import auto_augment_transform  # also makes timm's Posterize safe at 0 bits

S = 32
FILL = {1: (0.5,), 3: (0.49, 0.48, 0.45)}  # data means; the fill colour of the geometric ops


def images(n: int, c: int, seed: int = 0) -> torch.Tensor:
    """(n, c, S, S) uint8 images with smooth structure, noise and a range inside 10..230 (so AutoContrast,
    Equalize and Solarize all have something to do)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    base = torch.rand(n, c, 1, 1, generator=g) * 120 + 40
    period = torch.rand(n, 1, 1, 1, generator=g) * 5 + 3
    phase = torch.rand(n, c, 1, 1, generator=g) * 6
    waves = 60 * torch.sin(xx / period + phase) * torch.cos(yy / 5)  # (n, c, S, S)
    noise = torch.randint(-20, 21, (n, c, S, S), generator=g)
    return (base + waves + noise).clamp(10, 230).round().to(torch.uint8)


def to_pil(x: torch.Tensor) -> Image.Image:
    a = x.permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


def from_pil(img: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.array(img))
    return a[None] if a.ndim == 2 else a.permute(2, 0, 1)  # (C, H, W)


def timm_op(name: str, img: Image.Image, level: float, negate: bool, c: int, monkeypatch) -> Image.Image:
    """timm's op ``name`` at magnitude ``level`` with the sign forced, bilinear (timm picks bilinear or bicubic at
    random when no interpolation is set), filling with FILL[c] as vitlab's per-image path does."""
    monkeypatch.setattr(auto_augment.random, "random", lambda: 0.9 if negate else 0.1)  # _randomly_negate
    hparams = {"translate_const": int(S * 0.45)}
    level_fn = auto_augment.LEVEL_TO_ARG[name]
    args = level_fn(level, hparams) if level_fn is not None else ()
    monkeypatch.undo()
    fill = tuple(round(255 * m) for m in FILL[c])
    return auto_augment.NAME_TO_OP[name](img, *args, fillcolor=fill, resample=Image.BILINEAR)


def one_op(name: str, x: torch.Tensor, level: float, negate: torch.Tensor) -> torch.Tensor:
    """Our op ``name`` at ``level`` on every sample of x."""
    spec = dataclasses.replace(rand_augment_spec("rand-m9-mstd0.5-inc1"), ops=(name,))
    ra = BatchedRandAugment(spec, fill=FILL[x.shape[1]])
    op = torch.zeros(len(x), 1, dtype=torch.long)  # (B, 1): one layer, op 0 everywhere
    arg = ra.op_args(op, torch.full(op.shape, level, dtype=torch.float64), negate[:, None], S)  # (B, 1)
    return ra.apply_layer(x, op[:, 0], arg[:, 0], torch.ones(len(x), dtype=torch.bool))


# ---- parsing: timm's own parser, read back
@pytest.mark.parametrize("config", ["rand-m9-mstd0.5-inc1", "rand-n1-m10-mstd101", "rand-m9-mstd0.5", "rand-m7-n3-p0.8",
                                    "rand-n2-m15-mmax20-mstd1-inc1", "rand-m9-tweights"])
def test_spec_matches_timms_parse(config):
    spec, ra = rand_augment_spec(config), auto_augment.rand_augment_transform(config, {"translate_const": 14})
    op = ra.ops[0]
    assert spec.ops == tuple(o.name for o in ra.ops) and spec.num_layers == ra.num_layers
    assert (spec.magnitude, spec.magnitude_std, spec.prob) == (op.magnitude, op.magnitude_std, op.prob)
    assert spec.magnitude_max == (op.magnitude_max or 10)
    assert spec.weights == (None if ra.choice_weights is None else tuple(ra.choice_weights.tolist()))


def test_spec_of_the_recipe_strings():
    ra = rand_augment_spec("rand-m9-mstd0.5-inc1")
    assert (ra.num_layers, ra.magnitude, ra.magnitude_std, ra.magnitude_max, ra.prob) == (2, 9, 0.5, 10, 0.5)
    assert ra.ops == tuple(auto_augment._RAND_INCREASING_TRANSFORMS)
    ta = rand_augment_spec("rand-n1-m10-mstd101")  # mstd > 100: uniform magnitude in [0, 10]
    assert (ta.num_layers, ta.magnitude, ta.magnitude_std) == (1, 10, math.inf)
    assert ta.ops == tuple(auto_augment._RAND_TRANSFORMS)


@pytest.mark.parametrize("config, message", [
    ("original", "only timm's RandAugment strings"),
    ("augmix-m5-w3", "only timm's RandAugment strings"),
    ("rand-m9-x3", "not a timm RandAugment string"),
    ("rand-m9-t3a", "GaussianBlur"),  # DeiT III's 3-Augment: a blur of PIL's own, not batched here
])
def test_strings_it_cannot_batch_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        BatchedRandAugment(config)


# ---- level functions and single ops against timm's PIL ones
@pytest.mark.parametrize("name", SUPPORTED_OPS)
def test_level_to_arg_matches_timm(name, monkeypatch):
    levels = torch.cat([torch.linspace(0, 10, 41, dtype=torch.float64),
                        torch.rand(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10,
                        torch.tensor([12.5, 20.0], dtype=torch.float64)])  # beyond 10 with mmax
    fn = auto_augment.LEVEL_TO_ARG[name]
    for negate in (False, True):
        ours = level_to_arg(name, levels, torch.full_like(levels, negate, dtype=torch.bool), translate_const=14)
        monkeypatch.setattr(auto_augment.random, "random", lambda: 0.9 if negate else 0.1)
        theirs = [fn(v, {"translate_const": 14})[0] if fn else 0.0 for v in levels.tolist()]
        monkeypatch.undo()
        assert ours.tolist() == theirs, name


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", SUPPORTED_OPS)
def test_each_op_matches_timms_pil_op(name, c, monkeypatch):
    """Equal to the pixel: Pillow's bilinear warp is redone in float64 in its order of operations. Rotate may
    differ by 1 on a rare pixel (under 0.1 %), where its sine's last bit (torch's vs libm's) tips a truncation."""
    x = images(6, c)
    negate = torch.tensor([False, True] * 3)
    for level in (4.0, 10.0):  # 10: Rotate 30 degrees, Solarize(Increasing) at its extreme, Posterize 0 bits
        ours = one_op(name, x, level, negate)
        theirs = torch.stack([from_pil(timm_op(name, to_pil(im), level, bool(n), c, monkeypatch))
                              for im, n in zip(x, negate)])
        diff = (ours.int() - theirs.int()).abs()
        if name == "Rotate":
            assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, (level, diff.max())
        else:
            assert diff.max() == 0, (name, level, diff.max(), (diff > 0).float().mean())


def test_zero_magnitude_is_identity_where_timms_is(monkeypatch):
    """At magnitude 0 the geometric ops, Solarize(Increasing), SolarizeAdd and the "increasing" blends leave an
    image as it is, in both; AutoContrast, Equalize, Invert, PosterizeIncreasing (4 bits) do not."""
    x = images(4, 3)
    negate = torch.zeros(4, dtype=torch.bool)
    unchanged = {"ours": set(), "timm": set()}
    for name in auto_augment._RAND_INCREASING_TRANSFORMS:
        ours = one_op(name, x, 0.0, negate)
        theirs = torch.stack([from_pil(timm_op(name, to_pil(im), 0.0, False, 3, monkeypatch)) for im in x])
        assert torch.equal(ours, theirs), name
        for who, y in (("ours", ours), ("timm", theirs)):
            if torch.equal(y, x):
                unchanged[who].add(name)
    changing = {"AutoContrast", "Equalize", "Invert", "PosterizeIncreasing"}
    assert unchanged["ours"] == unchanged["timm"] == set(auto_augment._RAND_INCREASING_TRANSFORMS) - changing


def test_probability_zero_and_magnitude_zero_leave_images_alone():
    x = images(64, 3)
    assert torch.equal(BatchedRandAugment("rand-m9-p0")(x, torch.Generator().manual_seed(0)), x)
    spec = rand_augment_spec("rand-m0-n3-p1.0-inc1")
    still = tuple(n for n in spec.ops if n not in ("AutoContrast", "Equalize", "Invert", "PosterizeIncreasing"))
    ra = BatchedRandAugment(dataclasses.replace(spec, ops=still))
    assert torch.equal(ra(x, torch.Generator().manual_seed(0)), x)


# ---- randomness: per sample, seeded
def test_each_sample_draws_its_own_ops():
    x = images(1, 3).expand(128, -1, -1, -1).contiguous()  # 128 copies of one image
    out = BatchedRandAugment("rand-m9-mstd0.5-inc1")(x, torch.Generator().manual_seed(0))
    distinct = {bytes(o.flatten().numpy()) for o in out}
    assert len(distinct) > 64, len(distinct)  # one op for the whole batch would give 1 or 2


def test_same_generator_seed_same_batch():
    x = images(32, 1)
    ra = BatchedRandAugment("rand-n1-m10-mstd101", fill=(0.3,))
    a, b = (ra(x, torch.Generator().manual_seed(7)) for _ in range(2))
    c = ra(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("config, c", [("rand-m9-mstd0.5-inc1", 3), ("rand-n3-m7-mstd1-p0.9", 1),
                                       ("rand-n2-m9-tweights", 3)])
def test_whole_batch_and_subset_computations_agree(config, c):
    """The GPU way (every op family on the whole batch, kept where chosen) and the CPU way (each family on the
    samples that chose it) give the same images."""
    x = images(96, c)
    whole, subset = (BatchedRandAugment(config, fill=FILL[c], subset=s)(x, torch.Generator().manual_seed(3))
                     for s in (False, True))
    assert torch.equal(whole, subset) and not torch.equal(whole, x)


def test_float_images_are_augmented_at_8_bits():
    x = images(16, 3)
    ra = BatchedRandAugment("rand-m9-mstd0.5-inc1")
    as_uint8 = ra(x, torch.Generator().manual_seed(0))
    as_float = ra(x.float() / 255, torch.Generator().manual_seed(0))
    assert as_float.dtype == torch.float32
    torch.testing.assert_close(as_float, as_uint8.float() / 255)


@pytest.mark.parametrize("config, c", [("rand-m9-mstd0.5-inc1", 3), ("rand-n1-m10-mstd101", 1),
                                       ("rand-m9-mstd0.5", 3)])
def test_share_of_changed_images_matches_timm(config, c):
    """Over 1200 images the share that any op changed, and the mean pixel change, are timm's (both seeded; the
    standard error of the difference of the two shares is about 0.02)."""
    x = images(1200, c, seed=1)
    random.seed(0)
    np.random.seed(0)
    timm_ra = auto_augment_transform(config, S, FILL[c])  # what the per-image path uses
    theirs = torch.stack([from_pil(timm_ra(to_pil(im))) for im in x])
    ours = BatchedRandAugment(config, fill=FILL[c])(x, torch.Generator().manual_seed(0))
    share = [(y != x).flatten(1).any(1).float().mean().item() for y in (ours, theirs)]
    change = [(y.float() - x.float()).abs().mean().item() for y in (ours, theirs)]
    assert abs(share[0] - share[1]) < 0.06, share
    assert abs(change[0] - change[1]) < 0.1 * change[1], change


# ---- in DeviceCachedLoader and the data module
def loader(data, **kw):
    kw = {"batch_size": 8, "mean": (0.5,) * 3, "std": (0.25,) * 3, "train": True, "device": "cpu",
          "auto_augment": "rand-m9-mstd0.5-inc1", "native_mean": FILL[3], **kw}
    return DeviceCachedLoader(*data, **kw)


@pytest.fixture
def data():
    return images(40, 3, seed=2), torch.arange(40)


def test_loader_applies_it_after_crop_and_flip_with_the_batch_generator(data):
    dl = loader(data, pad=0, flip=False, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    x, y = next(iter(dl))
    g = torch.Generator().manual_seed(sample_seed(dl.sampler.seed, 0, 0))  # batch 0 of epoch 0, rank 0
    expected = BatchedRandAugment("rand-m9-mstd0.5-inc1", fill=FILL[3])(data[0][y], g)
    torch.testing.assert_close(x, expected.float(), atol=1e-3, rtol=0)
    plain = next(iter(loader(data, pad=0, flip=False, auto_augment=None)))[0]
    assert not torch.equal(plain, next(iter(loader(data, pad=0, flip=False)))[0])
    evaluation = [next(iter(loader(data, train=False, auto_augment=a)))[0] for a in ("rand-m9-mstd0.5-inc1", None)]
    assert torch.equal(*evaluation)  # evaluation batches are never augmented


def test_loader_with_auto_augment_resumes_mid_epoch_exactly(data):
    first = loader(data, erase=0.5)
    first.set_epoch(1)
    epoch = list(first)
    resumed = loader(data, erase=0.5)
    resumed.load_state_dict({"epoch": 1, "batches": 2, "seed": first.sampler.seed})
    rest = list(resumed)
    assert len(rest) == len(epoch) - 2
    for (xa, ya), (xb, yb) in zip(epoch[2:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_checks_the_fill_and_the_string(data):
    with pytest.raises(ValueError, match="native_mean needs 3 values"):
        loader(data, native_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="only timm's RandAugment strings"):
        loader(data, auto_augment="augmix-m5-w3")


def test_data_module_passes_it_to_the_device_loader(cifar_root):
    from vitlab.data import CIFAR10DataModule

    kw = dict(data_dir=str(cifar_root), batch_size=8, num_workers=0, val_split=8, on_device=True,
              auto_augment="rand-m9-mstd0.5-inc1")
    for augment in (True, False):
        dm = CIFAR10DataModule(**kw, augment=augment)
        dm.setup("fit")
        train = dm.train_dataloader()
        if augment:
            assert train.auto_augment.config == "rand-m9-mstd0.5-inc1"
            assert train.auto_augment.fill == tuple(dm.native_mean)
            x, _ = next(iter(train))
            assert x.shape == (8, 3, 32, 32)
        else:
            assert train.auto_augment is None
        assert dm.val_dataloader().auto_augment is None


@pytest.mark.gpu
def test_on_cuda_matches_cpu_and_resumes():
    """Same draws on both devices (the CUDA generator's numbers differ from the CPU one's, so they are drawn here):
    the same images but for a rotation's last bit; and the loader on CUDA resumes exactly."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = images(64, 3)
    ra = BatchedRandAugment("rand-m9-mstd0.5-inc1", fill=FILL[3])
    g = torch.Generator().manual_seed(0)
    op = torch.randint(0, len(ra.spec.ops), (64, 2), generator=g)
    level = torch.rand(64, 2, generator=g, dtype=torch.float64) * 10
    negate, on = torch.rand(64, 2, generator=g) > 0.5, torch.rand(64, 2, generator=g) > 0.2
    arg = {dev: ra.op_args(op.to(dev), level.to(dev), negate.to(dev), S) for dev in ("cpu", "cuda")}
    for i in range(2):  # layer by layer from the same input (a pixel off by one could move a later Equalize)
        y = {dev: ra.apply_layer(x.to(dev), op[:, i].to(dev), arg[dev][:, i], on[:, i].to(dev)).cpu()
             for dev in ("cpu", "cuda")}
        diff = (y["cpu"].int() - y["cuda"].int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, i
        x = y["cpu"]
    data = images(40, 3, seed=2), torch.arange(40)
    first = loader(data, device="cuda")
    epoch = list(first)
    resumed = loader(data, device="cuda")
    resumed.load_state_dict({"epoch": 0, "batches": 3, "seed": first.sampler.seed})
    for (xa, _), (xb, _) in zip(epoch[3:], resumed, strict=True):
        assert xa.is_cuda and torch.equal(xa, xb)
