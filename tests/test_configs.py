"""Every YAML in configs/ parses with `vitlab fit --print_config` (partial configs composed with the others),
every model config builds its model, and every full recipe says what it reaches."""
import subprocess
from pathlib import Path

import pytest
import yaml

from vitlab import cli
from vitlab.training import ImageClassifier

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_YAML = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
DEFAULTS = {"data": "data/fashion_mnist.yaml", "model": "model/vit_micro_patch.yaml", "trainer": "trainer/cpu.yaml"}
# what each model config is for: its data config, and the shapes linked from that data
MODEL_DATA = {"micro": ("data/fashion_mnist.yaml", dict(img_size=28, in_chans=1, num_classes=10)),
              "cct_micro": ("data/fashion_mnist.yaml", dict(img_size=28, in_chans=1, num_classes=10)),
              "lite7": ("data/cifar10.yaml", dict(img_size=32, in_chans=3, num_classes=10)),
              "cct_7": ("data/cifar10.yaml", dict(img_size=32, in_chans=3, num_classes=10)),
              "small": ("data/imagenet.yaml", dict(img_size=224, in_chans=3, num_classes=1000))}


def load(rel: str) -> dict:
    return yaml.safe_load((CONFIGS / rel).read_text()) or {}


def data_for(model_rel: str) -> tuple[str, dict]:
    return next(v for k, v in MODEL_DATA.items() if k in Path(model_rel).stem)


def composed(rel: str) -> list[str]:
    """``-c`` arguments: the config itself plus defaults for the groups it lacks."""
    keys = set(load(rel))
    extra = []
    if "data" not in keys:
        extra.append(data_for(rel)[0] if rel.startswith("model/") else DEFAULTS["data"])
    if "model" not in keys and "data" in keys and "trainer" not in keys:
        extra.append(DEFAULTS["model"])
    args = []
    for path in [rel, *extra]:
        args += ["-c", str(CONFIGS / path)]
    return args


def test_the_config_groups_exist():
    for rel in ("quickstart.yaml", "data/fashion_mnist.yaml", "data/cifar10.yaml", "data/cifar100.yaml",
                "data/imagenet.yaml", "trainer/cpu.yaml", "trainer/gpu.yaml", "trainer/ddp.yaml",
                "trainer/fsdp.yaml", "recipes/cifar10_cct.yaml"):
        assert rel in ALL_YAML, rel
    assert len([r for r in ALL_YAML if r.startswith("model/")]) >= 8


@pytest.mark.parametrize("rel", ALL_YAML)
def test_config_parses_with_print_config(rel, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", *composed(rel), "--print_config"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    printed = yaml.safe_load(out)
    for group, values in load(rel).items():  # what the file sets is what the parser holds
        if group in ("model", "trainer") and isinstance(values, dict):
            for key, value in values.items():
                if not isinstance(value, dict):
                    assert printed[group][key] == value, f"{group}.{key}"
                elif group == "model":  # a settings group (model.arch, model.optim, ...): each field it sets
                    for name, field_value in value.items():
                        assert printed[group][key][name] == field_value, f"{group}.{key}.{name}"


@pytest.mark.parametrize("rel", [r for r in ALL_YAML if r.startswith("model/")])
def test_model_config_builds_with_its_data_shapes(rel):
    kwargs = dict(load(rel)["model"])
    kwargs["arch"] = {**(kwargs.get("arch") or {}), **data_for(rel)[1]}  # the shapes the CLI links from the data
    model = ImageClassifier(**kwargs)
    assert model.cfg.num_classes == data_for(rel)[1]["num_classes"]


@pytest.mark.parametrize("rel", [r for r in ALL_YAML if {"data", "model", "trainer"} <= set(load(r))])
def test_full_recipes_say_what_they_reach(rel):
    text = (CONFIGS / rel).read_text()
    assert "Reaches:" in text, f"{rel}: add a '# Reaches: ...' comment (or 'not yet measured')"
    assert "vitlab " in text, f"{rel}: show the command that runs it"


def test_fsdp_config_wraps_encoder_blocks():
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy

    from vitlab.models.layers import Block

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    cfg = parser.parse_object({"strategy": load("trainer/fsdp.yaml")["trainer"]["strategy"]})
    strategy = parser.instantiate(cfg).strategy
    assert Block in strategy.kwargs["auto_wrap_policy"]._module_classes
    assert strategy.kwargs["use_orig_params"]  # needed for the decay / no-decay parameter groups


def test_slurm_script_is_valid_bash_and_uses_num_nodes():
    script = CONFIGS / "slurm" / "multinode.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "srun vitlab fit" in text and "--trainer.num_nodes" in text


@pytest.mark.parametrize("rel", [r for r in ALL_YAML if r.startswith("finetune/")])
def test_finetune_configs_follow_the_weights_data_config(rel, capsys):
    """No fine-tune config pins statistics: composed with CIFAR-10 and the augreg weights of full_llrd's command,
    the data takes the weights' mean/std 0.5 and bicubic resizing (not CIFAR's statistics); the header says so."""
    from vitlab.data import CIFAR10DataModule
    from vitlab.models.data_config import data_config_of, follow_weights

    text = (CONFIGS / rel).read_text()
    assert "Normalisation follows" in text and "--data.init_args.mean" in text, f"{rel}: say what normalises"
    with pytest.raises(SystemExit):
        cli.main(["fit", "-c", str(CONFIGS / "data/cifar10.yaml"), "-c", str(CONFIGS / rel), "--print_config"])
    args = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    taken, overridden, _ = follow_weights(args, CIFAR10DataModule,
                                              data_config_of("vit_small_patch16_224.augreg_in21k_ft_in1k"))
    assert args["mean"] == args["std"] == (0.5, 0.5, 0.5) and args["interpolation"] == "bicubic"
    assert not overridden
