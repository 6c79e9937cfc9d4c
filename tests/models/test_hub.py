"""Hugging Face Hub round trip: a vitlab model as a hub folder (timm's config.json, model.safetensors, a model card)
loads back with equal logits in vitlab (every tokenizer) and in timm (patch models); hf-hub: sources and pushing
fail in one line naming the repository when the hub cannot be reached. Nothing here contacts a real host."""
import json
import os

import huggingface_hub
import huggingface_hub.constants
import pytest
import timm
import torch
from conftest import CPU_TRAINER, TINY_MODEL, fashion_mnist_data

import vitlab
from vitlab import cli
from vitlab.models.hub import push_to_hub, save_hub_folder
from vitlab.models.pretrained import read_source

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
VARIANTS = {
    "patch_cls": dict(),
    "patch_avg_sincos_registers": dict(pool="avg", pos_embed="sincos", num_registers=2, layer_scale_init=0.1),
    "conv": dict(tokenizer="conv"),
    "cct_seq": dict(tokenizer="cct", pool="seq", tokenizer_options={"layers": 2}),
}
DATA = {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1], "interpolation": "bilinear", "crop_pct": 0.9}
CLASSES = [f"class_{i}" for i in range(10)]


def _model(**kwargs) -> vitlab.VisionTransformer:
    torch.manual_seed(0)
    model = vitlab.create_model(**{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init so every tensor matters
            p.add_(0.05 * torch.randn_like(p))
    return model


def _diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_round_trip_through_vitlab(variant, tmp_path):
    model = _model(**VARIANTS[variant])
    folder = save_hub_folder(model, tmp_path / "hub", data_config=DATA, class_names=CLASSES)
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    loaded = vitlab.create_model(pretrained=str(folder))
    assert loaded.cfg == model.cfg
    assert _diff(model, loaded) <= 1e-5


@pytest.mark.parametrize("variant", ["patch_cls", "patch_avg_sincos_registers"])
def test_patch_folder_loads_in_plain_timm(variant, tmp_path):
    model = _model(**VARIANTS[variant])
    folder = save_hub_folder(model, tmp_path / "hub", data_config=DATA, class_names=CLASSES)
    ref = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert type(ref).__module__ == "timm.models.vision_transformer"
    assert _diff(model, ref) <= 1e-5
    # timm reads the data config and label names back from pretrained_cfg
    data = timm.data.resolve_model_data_config(ref)
    assert tuple(data["mean"]) == tuple(DATA["mean"]) and tuple(data["std"]) == tuple(DATA["std"])
    assert (data["interpolation"], data["crop_pct"], tuple(data["input_size"])) == ("bilinear", 0.9, (3, 32, 32))
    assert ref.pretrained_cfg["label_names"] == CLASSES


@pytest.mark.parametrize("variant", ["conv", "cct_seq"])
def test_conv_and_cct_folders_load_in_timm_after_import_vitlab(variant, tmp_path):
    model = _model(**VARIANTS[variant])
    folder = save_hub_folder(model, tmp_path / "hub", preset="vit_micro_conv4_28" if variant == "conv" else None)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ("vitlab_vit_micro_conv4_28" if variant == "conv" else "vitlab_cct_micro_28")
    ref = timm.create_model(f"local-dir:{folder}", pretrained=True)  # vitlab's timm entrypoint, timm's loading
    assert isinstance(ref, vitlab.VisionTransformer) and ref.cfg == model.cfg
    assert _diff(model, ref) <= 1e-5


def test_config_json_is_timms_schema(tmp_path):
    model = _model()
    folder = save_hub_folder(model, tmp_path / "hub", data_config=DATA, class_names=CLASSES)
    config = json.loads((folder / "config.json").read_text())
    assert {"architecture", "num_classes", "num_features", "model_args", "pretrained_cfg", "label_names",
            "vitlab_config"} <= set(config)
    pre = config["pretrained_cfg"]
    assert (pre["mean"], pre["std"], pre["input_size"]) == (DATA["mean"], DATA["std"], [3, 32, 32])
    assert (pre["interpolation"], pre["crop_pct"], pre["num_classes"]) == ("bilinear", 0.9, 10)
    assert (pre["first_conv"], pre["classifier"]) == ("patch_embed.proj", "head")
    assert config["label_names"] == CLASSES and config["vitlab_config"] == json.loads(json.dumps(model.cfg.to_dict()))


def test_model_card_has_metrics_and_command(tmp_path):
    folder = save_hub_folder(_model(), tmp_path / "hub", data_config=DATA, metrics={"test/acc1": 0.91234},
                             command="vitlab fit -c run.yaml", repo_id="me/tiny")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\ntags:\n- image-classification\n- timm\n- vitlab\nlibrary_name: timm\nlicense:")
    for text in ("| test/acc1 | 0.9123 |", "vitlab fit -c run.yaml", 'pretrained="hf-hub:me/tiny"',
                 "| 3 x 32 x 32 | 0.1, 0.2, 0.3 | 0.3, 0.2, 0.1 | bilinear | 0.9 |"):
        assert text in card, text


def test_existing_folder_is_not_overwritten_unless_asked(tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="hub exists and is not empty; pass overwrite=True"):
        save_hub_folder(_model(), folder)
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    save_hub_folder(_model(), folder, overwrite=True)
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors", "notes.txt"]


def test_mismatched_data_config_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"data_config mean=\[0.5\] has 1 values for a model with in_chans=3"):
        save_hub_folder(_model(), tmp_path / "hub", data_config={"mean": [0.5]})
    with pytest.raises(ValueError, match="2 class_names for a model with num_classes=10"):
        save_hub_folder(_model(), tmp_path / "hub", class_names=["a", "b"])


def test_export_takes_the_checkpoints_ema_data_config_and_class_names(tmp_path):
    """A vitlab .ckpt: architecture from its hyper_parameters, the EMA weights (what validation and test ran),
    the data config and class names it stores."""
    from vitlab.tools.hub_export import export

    model, ema = _model(), _model(depth=2)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    state = {**{f"model.{k}": v for k, v in model.state_dict().items()},
             **{f"ema.module.{k}": v for k, v in ema.state_dict().items()}}
    data = {"input_size": [3, 32, 32], "mean": [0.2, 0.2, 0.2], "std": [0.4, 0.4, 0.4], "interpolation": "bicubic",
            "crop_pct": 0.875}
    torch.save({"state_dict": state, "hyper_parameters": {"preset": None, **SMALL, "base_lr": 1e-3},
                "data_config": data, "class_names": CLASSES}, tmp_path / "run.ckpt")
    folder = export(tmp_path / "run.ckpt", tmp_path / "hub")
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == data["mean"] and config["pretrained_cfg"]["crop_pct"] == 0.875
    assert config["label_names"] == CLASSES
    assert "Data config: stored in the checkpoint" in (folder / "README.md").read_text()
    assert _diff(ema, vitlab.create_model(pretrained=str(folder))) <= 1e-5
    raw = export(tmp_path / "run.ckpt", tmp_path / "raw", ema=False)
    assert _diff(model, vitlab.create_model(pretrained=str(raw))) <= 1e-5


# ---------------------------------------------------------------- the hub, without reaching it
@pytest.fixture
def offline(monkeypatch, tmp_path):
    """As HF_HUB_OFFLINE=1 at start-up, with an empty cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.parametrize("repo", ["org/name", "org/name@v1.0"])
def test_hf_hub_source_offline_is_one_line(offline, repo):
    with pytest.raises(ValueError) as err:
        vitlab.create_model(pretrained=f"hf-hub:{repo}")
    message = str(err.value)
    assert message.startswith(f"could not download hf-hub:{repo} from the Hugging Face hub: the hub could not be "
                              f"reached (offline mode is on") and "\n" not in message, message


def test_hf_hub_source_downloads_the_folder(tmp_path, monkeypatch):
    """``hf-hub:org/name@rev`` fetches config.json and the weights (huggingface_hub, here a stand-in)."""
    model = _model(tokenizer="conv")
    folder = save_hub_folder(model, tmp_path / "repo")
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append((repo_id, filename, revision))
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = vitlab.create_model(pretrained="hf-hub:org/name@v2")
    assert calls == [("org/name", "config.json", "v2"), ("org/name", "model.safetensors", "v2")]
    assert _diff(model, loaded) <= 1e-5
    with pytest.raises(ValueError, match="hf-hub:name is not a Hugging Face repository id"):
        read_source("hf-hub:name")


def test_push_offline_is_one_line(offline, tmp_path):
    folder = save_hub_folder(_model(), tmp_path / "hub")
    with pytest.raises(ValueError) as err:
        push_to_hub(folder, "org/name", token="hf_not_a_token")
    assert str(err.value) == (f"could not push {folder} to the Hugging Face hub repository org/name: the hub could "
                              f"not be reached: offline mode is on (HF_HUB_OFFLINE=1)")


def test_push_to_a_closed_port_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed local port
    folder = save_hub_folder(_model(), tmp_path / "hub")
    with pytest.raises(ValueError) as err:
        push_to_hub(folder, "org/name", token="hf_not_a_token")
    message = str(err.value)
    assert message.startswith(f"could not push {folder} to the Hugging Face hub repository org/name: the hub could "
                              f"not be reached") and "\n" not in message, message


# ---------------------------------------------------------------- the command, on a real Lightning run
@pytest.fixture(scope="module")
def tested_run(tmp_path_factory, fashion_mnist_available):
    """A tiny fit (1 epoch) then `vitlab test` of its last checkpoint: the checkpoint and the test's metrics."""
    runs = tmp_path_factory.mktemp("runs")
    common = [*fashion_mnist_data(train=128, evaluate=64), *TINY_MODEL, *CPU_TRAINER, "--runs_dir", str(runs),
              "--run_name", "fm", "--trainer.enable_progress_bar", "false"]
    assert cli.main(["fit", *common, "--model.preset", "vit_micro_patch4_28", "--model.arch.patch_size", "7",
                     "--trainer.max_epochs", "1"]) == 0
    ckpt = runs / "fm" / "version_0" / "checkpoints" / "last.ckpt"
    assert cli.main(["test", "-c", str(runs / "fm" / "version_0" / "config.yaml"), "--ckpt_path", str(ckpt)]) == 0
    from vitlab.training.callbacks import read_epoch_metrics
    metrics = read_epoch_metrics(str(runs / "fm" / "version_0" / "test" / "metrics.csv"))  # next to the run
    return ckpt, {k: v[max(v)] for k, v in metrics.items() if k.startswith("test/")}


def test_export_hub_command_end_to_end(tested_run, tmp_path, capsys):
    from vitlab.models.checkpoint import load_checkpoint

    ckpt, test_metrics = tested_run
    out = tmp_path / "hub"
    assert cli.main(["export-hub", str(ckpt), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert set(test_metrics) == {"test/acc1", "test/acc5", "test/loss"}
    for key, value in test_metrics.items():
        assert f"| {key} | {value:.4f} |" in card
    assert f"vitlab export-hub {ckpt} {out}" in card and "vitlab fit -c" in card and "vitlab test -c" in card
    assert "model:" in card  # the run's config.yaml
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    if stored.get("data_config"):  # what `vitlab fit` stores with the weights goes into the folder
        assert config["pretrained_cfg"]["mean"] == list(stored["data_config"]["mean"])
        assert "Data config: stored in the checkpoint" in card
    if stored.get("class_names"):
        assert config["label_names"] == stored["class_names"]
    trained = load_checkpoint(ckpt).model  # the checkpoint as vitlab's other tools read it
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        by_timm = timm.create_model(f"local-dir:{out}", pretrained=True)
        for loaded in (vitlab.create_model(pretrained=str(out)), by_timm):
            assert (loaded.eval()(x) - trained(x)).abs().max().item() <= 1e-5


def test_export_hub_command_errors(tested_run, tmp_path, capsys, offline):
    ckpt, _ = tested_run
    with pytest.raises(SystemExit) as exc:
        cli.main(["export-hub", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])
    assert exc.value.code == 2
    missing = tmp_path / "missing.ckpt"
    assert capsys.readouterr().err == f"vitlab export-hub: error: checkpoint '{missing}' does not exist\n"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("someone's")
    with pytest.raises(SystemExit) as exc:
        cli.main(["export-hub", str(ckpt), str(tmp_path / "out")])
    assert exc.value.code == 2 and "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["export-hub", str(ckpt), str(tmp_path / "out"), "--overwrite", "--push", "org/name"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1 and "repository org/name: the hub could not be reached" in err
    assert (tmp_path / "out" / "model.safetensors").is_file()  # written before the push was tried
