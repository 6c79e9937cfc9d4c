"""The training settings groups of ImageClassifier (vitlab.training.settings): each group checks its own values and
names ``group.field``; unknown keys list the valid ones; the flat keys of vitlab before the groups say where they
live now (Python, CLI, YAML); checkpoints written with flat hyper-parameters still load, in Python and with
``vitlab test --ckpt_path``."""
import dataclasses
import math
from pathlib import Path

import lightning
import pytest
import torch
from conftest import CPU_TRAINER, TINY_MODEL, fashion_mnist_data, latest_run_folder

from vitlab import cli
from vitlab.models.config import RENAMED_FIELDS, ViTConfig, ViTOverrides
from vitlab.training import Evaluation, Finetune, ImageClassifier, Optim, Regularization, Schedule, Speed
from vitlab.training.callbacks import read_epoch_metrics
from vitlab.training.settings import GROUPS, MOVED, moved_message, upgrade_hparams

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=7, img_size=28, in_chans=1, num_classes=10)
OLD_NAME = {option: old for old, (_, option) in RENAMED_FIELDS.items()}  # "layers" -> "cct_layers", ...


def old_flat(hparams) -> dict:
    """``hyper_parameters`` as vitlab wrote them before the groups: every ViTConfig field at the top (None when
    unset), the old tokenizer fields (``cct_layers``, ...) instead of ``tokenizer_options``, every setting flat
    (``optim.name`` as ``optimizer``); anything else (``preset``, ``nonfinite``, ``_instantiator``) as it was."""
    flat = {k: v for k, v in hparams.items() if k not in GROUPS}
    flat.update({name: None for name in ViTConfig.field_names() if name != "tokenizer_options"})
    flat.update({old: None for old in RENAMED_FIELDS})
    arch = dict(hparams["arch"])
    options = arch.pop("tokenizer_options", None) or {}
    assert set(options) <= set(OLD_NAME), f"no old flat field for {set(options) - set(OLD_NAME)}"
    flat.update(arch)
    flat.update({OLD_NAME[option]: value for option, value in options.items()})
    for group in GROUPS:
        if group != "arch":
            for name, value in hparams[group].items():
                flat["optimizer" if (group, name) == ("optim", "name") else name] = value
    assert not set(flat) & set(GROUPS)
    return flat


def save_old_checkpoint(model: ImageClassifier, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": old_flat(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


# ---------------------------------------------------------------------------------------------- the groups
@pytest.mark.parametrize("group, values, message", [
    (Optim, dict(name="adamx"), "optim.name='adamx' is not one of timm's optimizers"),
    (Optim, dict(base_lr=-1), r"optim.base_lr must be a number in \(0, inf\), got -1"),
    (Optim, dict(base_lr=0.0), r"optim.base_lr must be a number in \(0, inf\), got 0.0"),
    (Optim, dict(base_lr=math.nan), "optim.base_lr must be a number"),
    (Optim, dict(base_lr=True), "optim.base_lr must be a number"),
    (Optim, dict(base_lr="fast"), "optim.base_lr must be a number"),
    (Optim, dict(base_batch_size=0), "optim.base_batch_size must be an integer >= 1, got 0"),
    (Optim, dict(base_batch_size=64.0), "optim.base_batch_size must be an integer"),
    (Optim, dict(weight_decay=-0.1), r"optim.weight_decay must be a number in \[0, inf\)"),
    (Optim, dict(momentum=1.5), r"optim.momentum must be a number in \[0, 1\)"),
    (Optim, dict(betas=(0.9, 1.5)), r"optim.betas must be two numbers in \[0, 1\), got \(0.9, 1.5\)"),
    (Optim, dict(betas=(0.9,)), "optim.betas must be two numbers"),
    (Schedule, dict(warmup_epochs=-1), r"schedule.warmup_epochs must be a number in \[0, inf\), got -1"),
    (Schedule, dict(min_lr=math.inf), "schedule.min_lr must be a number"),
    (Regularization, dict(label_smoothing=1.0), r"regularization.label_smoothing must be a number in \[0, 1\)"),
    (Regularization, dict(mixup=-0.2), "regularization.mixup must be a number"),
    (Regularization, dict(cutmix=-1), "regularization.cutmix must be a number"),
    (Regularization, dict(ema_decay=0.0), r"regularization.ema_decay must be a number in \(0, 1\)"),
    (Regularization, dict(ema_decay=1.0), "regularization.ema_decay must be a number"),
    (Finetune, dict(layer_decay=0.0), r"finetune.layer_decay must be a number in \(0, 1\)"),
    (Finetune, dict(layer_decay=1.5), "finetune.layer_decay must be a number"),
    (Finetune, dict(freeze="all"), "finetune.freeze must be 'none' or 'backbone', got 'all'"),
    (Finetune, dict(unfreeze_every_epochs=0), "finetune.unfreeze_every_epochs must be a number"),
    (Finetune, dict(tokenizer_warmup_steps=-1), "finetune.tokenizer_warmup_steps must be an integer >= 0, got -1"),
    (Evaluation, dict(tta="rot90"), r"evaluation.tta must be one of \['none', 'flip', 'flip_shift'\], got 'rot90'"),
    (Evaluation, dict(top_k=0), "evaluation.top_k must be an integer >= 1, got 0"),
    (Speed, dict(compile_backend="eager", compile_mode="max-autotune"),
     "speed.compile_mode='max-autotune' is inductor's; speed.compile_backend is 'eager'"),
])
def test_each_group_rejects_a_bad_value_naming_group_and_field(group, values, message):
    with pytest.raises(ValueError, match=message):
        group(**values)
    name = next(k for k, v in GROUPS.items() if v is group)
    with pytest.raises(ValueError, match=message):  # the same through ImageClassifier, as a dict
        ImageClassifier(arch=TINY, **{name: values})


def test_groups_take_instances_dicts_and_keep_the_defaults():
    m = ImageClassifier(arch=ViTOverrides(**TINY), optim=Optim(name="sgd", momentum=0.8), schedule={"min_lr": 0.0})
    assert m.optim == Optim(name="sgd", momentum=0.8) and m.schedule == Schedule(min_lr=0.0)
    assert (m.regularization, m.finetune, m.evaluation, m.speed) == (Regularization(), Finetune(), Evaluation(),
                                                                     Speed())
    assert m.optim.betas == (0.9, 0.999) and Optim(betas=[0.8, 0.9]).betas == (0.8, 0.9)  # a list from YAML
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.optim.base_lr = 1.0
    assert m.nonfinite == "stop"
    with pytest.raises(ValueError, match="nonfinite must be 'stop' or 'skip', got 'maybe'"):
        ImageClassifier(arch=TINY, nonfinite="maybe")
    with pytest.raises(ValueError, match="model.optim must be a mapping of Optim fields, got 3"):
        ImageClassifier(arch=TINY, optim=3)


@pytest.mark.parametrize("group, key", [("optim", "lr"), ("schedule", "warmup"), ("regularization", "dropout"),
                                        ("finetune", "freeze_backbone"), ("evaluation", "top5"), ("speed", "amp"),
                                        ("arch", "depht")])
def test_unknown_key_in_a_group_names_it_and_lists_the_valid_ones(group, key):
    with pytest.raises(ValueError) as err:
        ImageClassifier(**{group: {key: 1}})
    message = str(err.value)
    assert message.startswith(f"unknown key(s) ['{key}'] in model.{group}; valid: ")
    valid = sorted(f.name for f in dataclasses.fields(GROUPS[group]))
    assert message.endswith(f"valid: {valid}")


def test_an_old_tokenizer_field_in_arch_says_where_it_went():
    with pytest.raises(ValueError, match=r"model.cct_layers was renamed: use model.arch.tokenizer_options.layers"):
        ImageClassifier(arch={"cct_layers": 2})


def test_moved_covers_every_field_of_every_group():
    new = set(MOVED.values())
    for group, cls in GROUPS.items():
        assert {f"{group}.{f.name}" for f in dataclasses.fields(cls)} <= new, group
    assert MOVED["optimizer"] == "optim.name" and "name" not in MOVED
    assert {k for k, v in MOVED.items() if v.startswith("arch.")} == ViTConfig.field_names()


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_flat_keyword_is_a_type_error_naming_the_new_key(old, new):
    group, name = new.split(".")
    with pytest.raises(TypeError) as err:
        ImageClassifier(arch=TINY, **{old: None})
    message = str(err.value)
    assert message == moved_message(old) and "\n" not in message
    assert message.startswith(f"model.{old} moved: use model.{new} (YAML: model: {{{group}: {{{name}: ...}}}})")


def test_old_tokenizer_keyword_and_unknown_keyword():
    with pytest.raises(TypeError, match=r"^model.cct_layers was renamed: use model.arch.tokenizer_options.layers "
                                        r"\(YAML: model: \{arch: \{tokenizer: cct, tokenizer_options: \{layers: "):
        ImageClassifier(cct_layers=2)
    with pytest.raises(TypeError, match=r"model.base_lr moved: use model.optim.base_lr"):  # the first old key
        ImageClassifier(base_lr=1e-3, depth=2)
    with pytest.raises(TypeError, match=r"ImageClassifier got unexpected argument\(s\) \['bogus'\]"):
        ImageClassifier(bogus=1)


def test_arch_takes_a_whole_vit_config():
    cfg = ViTConfig(**{**TINY, "patch_size": 4}, tokenizer="conv", drop_path_rate=0.1)
    m = ImageClassifier(arch=cfg)
    assert m.cfg == cfg
    assert ImageClassifier(**m.hparams).cfg == cfg  # what the checkpoint keeps builds the same model
    assert ImageClassifier(arch=ViTOverrides(**TINY)).cfg == ViTConfig(**TINY)


def test_hyper_parameters_are_the_groups_as_plain_types(tmp_path):
    m = ImageClassifier(arch=TINY, optim={"name": "sgd"}, evaluation={"tta": "flip"}, nonfinite="skip")
    assert set(m.hparams) == {"preset", "pretrained", *GROUPS, "timm_model", "timm_kwargs", "nonfinite"}
    assert m.hparams["arch"] == TINY  # only the fields that were set
    assert m.hparams["optim"]["name"] == "sgd" and m.hparams["evaluation"]["tta"] == "flip"
    torch.save(dict(m.hparams), tmp_path / "h.pt")
    assert torch.load(tmp_path / "h.pt", weights_only=True) == dict(m.hparams)  # a safe load reads them


# ---------------------------------------------------------------------------------------------- old checkpoints
def test_upgrade_hparams_moves_flat_keys_into_their_groups():
    flat = {"preset": "cct_micro_28", "pretrained": None, "tokenizer": None, "depth": 1, "embed_dim": None,
            "cct_layers": 1, "cct_kernel": None, "stem_channels": [8, 16], "optimizer": "sgd", "base_lr": 1e-3,
            "momentum": 0.8, "warmup_epochs": 0.5, "min_lr": 0.0, "ema_decay": None, "mixup": 0.2,
            "layer_decay": 0.75, "freeze": "none", "tta": "flip", "top_k": 3, "compile": False, "nonfinite": "skip",
            "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    assert upgrade_hparams(flat) == {
        "preset": "cct_micro_28", "pretrained": None, "nonfinite": "skip",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
        # cct preset: cct_layers becomes its option; stem_channels was conv's (dropped); None fields are unset
        "arch": {"depth": 1, "tokenizer_options": {"layers": 1}},
        "optim": {"name": "sgd", "base_lr": 1e-3, "momentum": 0.8},
        "schedule": {"warmup_epochs": 0.5, "min_lr": 0.0},
        "regularization": {"ema_decay": None, "mixup": 0.2},
        "finetune": {"layer_decay": 0.75, "freeze": "none"},
        "evaluation": {"tta": "flip", "top_k": 3},
        "speed": {"compile": False}}
    up = upgrade_hparams(flat)
    m = ImageClassifier(**{k: v for k, v in up.items() if k != "_instantiator"})
    assert (m.cfg.tokenizer, m.cfg.depth, m.cfg.tokenizer_options["layers"]) == ("cct", 1, 1)
    assert m.optim.name == "sgd" and m.optim.momentum == 0.8 and m.evaluation == Evaluation(tta="flip", top_k=3)
    assert upgrade_hparams(up) == up  # already grouped: kept


def test_upgrade_hparams_keeps_the_tokenizer_option_of_the_tokenizer_it_belonged_to():
    patch = upgrade_hparams({"preset": "vit_micro_patch4_28", "cct_layers": 2, "stem_channels": [8, 16]})
    assert "tokenizer_options" not in patch["arch"]  # the old config carried every tokenizer's fields
    conv = upgrade_hparams({"preset": None, "tokenizer": "conv", "stem_channels": [8, 16], "cct_layers": 2})
    assert conv["arch"] == {"tokenizer": "conv", "tokenizer_options": {"channels": [8, 16]}}
    assert upgrade_hparams({"preset": None, "nonfinite": "stop"}) == {"preset": None, "nonfinite": "stop"}


def test_old_flat_checkpoint_loads_to_the_same_model_and_settings(tmp_path):
    torch.manual_seed(0)
    m = ImageClassifier(preset="cct_micro_28", arch={"depth": 1, "embed_dim": 32, "num_heads": 2,
                                                     "tokenizer_options": {"layers": 1}},
                        optim={"name": "sgd", "base_lr": 0.01, "momentum": 0.8}, schedule={"warmup_epochs": 0.5},
                        regularization={"ema_decay": 0.9, "label_smoothing": 0.0}, finetune={"layer_decay": 0.5},
                        evaluation={"tta": "flip", "top_k": 3}, speed={"channels_last": True}, nonfinite="skip")
    with torch.no_grad():
        for p in m.parameters():  # random weights everywhere (a zero-initialised head would make logits equal)
            p.add_(torch.randn_like(p) * 0.05)
    m.ema.module.load_state_dict(m.model.state_dict())
    path = save_old_checkpoint(m, tmp_path / "old.ckpt")
    saved = path.read_bytes()
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert "base_lr" in hparams and "optim" not in hparams and hparams["cct_layers"] == 1  # really the old layout

    loaded = ImageClassifier.load_from_checkpoint(path).eval()
    assert path.read_bytes() == saved  # read in today's groups in memory; the file is left as it was
    assert loaded.cfg == m.cfg and loaded.cfg.tokenizer_options["layers"] == 1
    assert (loaded.optim, loaded.schedule, loaded.regularization, loaded.finetune, loaded.evaluation, loaded.speed,
            loaded.nonfinite) == (m.optim, m.schedule, m.regularization, m.finetune, m.evaluation, m.speed, "skip")
    assert dict(loaded.hparams) == dict(m.hparams)  # re-saved in the groups
    # Lightning's load_from_checkpoint runs configure_model (channels_last here); do the same to compare bit for bit
    m.configure_model()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected, got = m.eval()(x), loaded(x)
        assert not torch.allclose(expected, expected[:, :1])
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded.eval_logits(x), m.eval_logits(x), rtol=0, atol=0)  # EMA + flip TTA

    # a new checkpoint of the loaded model loads too
    torch.save({"state_dict": loaded.state_dict(), "hyper_parameters": dict(loaded.hparams),
                "pytorch-lightning_version": lightning.__version__}, tmp_path / "new.ckpt")
    again = ImageClassifier.load_from_checkpoint(tmp_path / "new.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- the CLI
def moved_error(capsys, args: list[str]) -> str:
    """Run ``vitlab`` expecting exit 2 with one ``error:`` line (the last one); return that line."""
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


QUICKSTART = ["fit", "-c", str(CONFIGS / "quickstart.yaml")]


def test_cli_old_flag_names_the_new_key(capsys):
    line = moved_error(capsys, [*QUICKSTART, "--model.base_lr", "1"])
    assert line == "error: model.base_lr moved: use model.optim.base_lr (YAML: model: {optim: {base_lr: ...}})"
    line = moved_error(capsys, [*QUICKSTART, "--model.optimizer", "sgd"])
    assert line.startswith("error: model.optimizer moved: use model.optim.name ")
    line = moved_error(capsys, [*QUICKSTART, "--model.depth", "2"])
    assert line.startswith("error: model.depth moved: use model.arch.depth ")


def test_cli_old_key_in_a_yaml_names_the_new_key(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  warmup_epochs: 1\n")
    line = moved_error(capsys, [*QUICKSTART, "-c", str(old)])
    assert line == ("error: model.warmup_epochs moved: use model.schedule.warmup_epochs "
                    "(YAML: model: {schedule: {warmup_epochs: ...}})")


def test_cli_old_tokenizer_flag_names_the_option(capsys):
    line = moved_error(capsys, [*QUICKSTART, "--model.cct_layers", "2"])
    assert line.startswith("error: model.cct_layers was renamed: use model.arch.tokenizer_options.layers ")


def test_cli_new_keys_parse(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*QUICKSTART, "--model.optim.base_lr", "1", "--model.schedule.warmup_epochs", "1",
                  "--model.arch.depth", "2", "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "base_lr: 1.0" in out and "warmup_epochs: 1.0" in out and "depth: 2" in out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fashion_mnist_available) -> dict:
    """A tiny `vitlab fit` on Fashion-MNIST (4 steps), its last.ckpt, and a copy with the old flat hyper-parameters."""
    root = tmp_path_factory.mktemp("settings_fit")
    runs = root / "runs"
    data = fashion_mnist_data(batch_size=16, train=64, evaluate=32)
    assert cli.main(["fit", *data, *TINY_MODEL, *CPU_TRAINER, "--model.arch.patch_size", "7",
                     "--model.optim.name", "sgd", "--model.regularization.label_smoothing", "0.0",
                     "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                     "--runs_dir", str(runs), "--run_name", "new"]) == 0
    last = latest_run_folder(runs / "new") / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    # as vitlab's CLI wrote them before the groups (save_hyperparameters() under LightningCLI adds its instantiator)
    ckpt["hyper_parameters"] = {**old_flat(ckpt["hyper_parameters"]),
                                "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save(ckpt, root / "old_flat.ckpt")  # outside any run folder: evaluated in a run folder of its own
    return {"root": root, "runs": runs, "data": data, "new": last, "old": root / "old_flat.ckpt"}


def test_cli_test_reads_an_old_flat_checkpoint(fitted):
    hparams = torch.load(fitted["old"], weights_only=True)["hyper_parameters"]
    assert hparams["optimizer"] == "sgd" and hparams["embed_dim"] == 32 and "arch" not in hparams
    runs = fitted["runs"]
    common = [*fitted["data"], *CPU_TRAINER, "--trainer.enable_progress_bar", "false", "--runs_dir", str(runs)]
    # no model options: the model comes from the checkpoint's (old, flat) hyper-parameters
    assert cli.main(["test", *common, "--ckpt_path", str(fitted["old"]), "--run_name", "old"]) == 0
    old_dir = latest_run_folder(runs / "old")
    old = read_epoch_metrics(str(old_dir / "metrics.csv"))
    assert 0.0 <= old["test/acc1"][0] <= 1.0 and "test/loss" in old
    import yaml
    model = yaml.safe_load((old_dir / "config.yaml").read_text())["model"]
    assert model["arch"]["embed_dim"] == 32 and model["arch"]["patch_size"] == 7 and model["optim"]["name"] == "sgd"

    # the same numbers as the checkpoint in today's layout
    assert cli.main(["test", *common, "--ckpt_path", str(fitted["new"]), "--run_name", "new"]) == 0
    new = read_epoch_metrics(str(latest_run_folder(runs / "new") / "metrics.csv"))
    assert old["test/acc1"][0] == pytest.approx(new["test/acc1"][0], abs=1e-6)
    assert old["test/loss"][0] == pytest.approx(new["test/loss"][0], rel=1e-5)


def test_old_flat_checkpoint_of_the_cli_loads_in_python(fitted):
    """The old flat form of a CLI checkpoint (built through Lightning's instantiator) loads like the new one."""
    old, new = (ImageClassifier.load_from_checkpoint(fitted[k]).eval() for k in ("old", "new"))
    assert old.cfg == new.cfg and old.optim == new.optim == Optim(name="sgd")
    assert old.regularization.label_smoothing == 0.0
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(old(x), new(x), rtol=0, atol=0)
