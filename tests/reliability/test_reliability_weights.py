"""Non-finite tensors in any loaded weights are an error naming the tensor: pretrained files, hub folders, a vitlab
checkpoint for export/attention, and a checkpoint given to `vitlab test --ckpt_path`."""
import pytest
import torch
from safetensors.torch import save_file

import vitlab
from vitlab import cli
from vitlab.models.checkpoint import load_checkpoint
from vitlab.training import ImageClassifier

SMALL = dict(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=1, num_heads=2)


def _poisoned(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    return state


def test_pretrained_file_and_hub_folder_with_nan_are_refused(tmp_path):
    model = vitlab.create_model(**SMALL)
    save_file(_poisoned(model), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"non-finite weights .* blocks\.0\.attn\.qkv\.weight"):
        vitlab.create_model(**SMALL, pretrained=str(tmp_path / "w.safetensors"))
    folder = tmp_path / "hub"
    folder.mkdir()
    save_file(_poisoned(model), str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight"):
        vitlab.create_model(**SMALL, pretrained=str(folder))


def _checkpoint(tmp_path, poison: bool):
    module = ImageClassifier(arch=SMALL)
    state = module.state_dict()
    if poison:
        state["model.head.weight"][0, 0] = float("inf")
    path = tmp_path / ("bad.ckpt" if poison else "good.ckpt")
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams), "pytorch-lightning_version": "2.6.6",
                "epoch": 0, "global_step": 0}, path)
    return path


def test_vitlab_checkpoint_with_inf_is_refused_by_the_loader(tmp_path):
    load_checkpoint(_checkpoint(tmp_path, poison=False))  # the same file without the inf loads
    with pytest.raises(ValueError, match=r"non-finite weights .* model\.head\.weight|head\.weight"):
        load_checkpoint(_checkpoint(tmp_path, poison=True))


def test_vitlab_test_refuses_a_checkpoint_with_inf_in_one_line(tmp_path, capsys, fashion_mnist_available):
    from conftest import FASHION_MNIST_DIR
    path = _checkpoint(tmp_path, poison=True)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["test", "-c", "configs/quickstart.yaml", "--data.init_args.data_dir", FASHION_MNIST_DIR,
                  "--model.arch.depth", "1", "--model.arch.embed_dim", "32", "--model.arch.num_heads", "2",
                  "--runs_dir", str(tmp_path / "runs"), "--ckpt_path", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite weights" in err and "model.head.weight" in err
