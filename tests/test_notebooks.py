"""Execute the notebooks with small parameters (``pytest -m notebook``): they run without error, show plots,
and their kernel is this environment's Python."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# CI sizes: a few seconds of work each on 2 CPU cores (kernel start and imports dominate)
SMALL = {
    "01_tokenizers.ipynb": dict(n_channels=2, table_presets=["vit_micro_patch4_28", "vit_micro_conv4_28",
                                                             "cct_micro_28", "cct_7_3x1_32"]),
    "02_attention_maps.ipynb": dict(train_steps=3, batch_size=16, depth=1, n_images=2),
    "03_finetune.ipynb": dict(pretrain_samples=512, pretrain_epochs=1, finetune_epochs=1, train_subset=128),
}
MIN_PLOTS = {"01_tokenizers.ipynb": 4, "02_attention_maps.ipynb": 4, "03_finetune.ipynb": 1}


def inject_parameters(nb, params: dict) -> None:
    """Insert a cell assigning ``params`` right after the cell tagged ``parameters`` (as papermill does)."""
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    assert index is not None, "the notebook has no cell tagged 'parameters'"
    source = "# injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)


def execute(name: str, params: dict):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    inject_parameters(nb, params)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL_PREFIX=' + sys.prefix)"))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    return nb


def outputs(nb, key: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if key in o.get("data", {})]


def stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("name") == "stdout")


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and nb.cells.index(tagged[0]) <= 1, f"{path.name}: one parameters cell at the top"


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs_and_shows_plots(name, tmp_path):
    params = {"data_dir": str(tmp_path), "workdir": str(tmp_path / "work"), **SMALL[name]}
    nb = execute(name, params)  # data from Debian's fashion-mnist package
    assert len(outputs(nb, "image/png")) >= MIN_PLOTS[name], f"{name} showed too few plots"
    assert f"KERNEL_PREFIX={sys.prefix}" in stdout(nb), "the notebook kernel is not this environment's Python"
    if name.startswith("01"):
        table = outputs(nb, "text/markdown")[0]["data"]["text/markdown"]
        assert "cct_7_3x1_32" in table and "| 13 / 4 |" in table
    if name.startswith("03"):
        assert "max |vitlab - timm|" in stdout(nb) and "resampled" in stdout(nb)


@pytest.mark.notebook
def test_attention_notebook_explains_a_checkpoint(tmp_path):
    """With ``checkpoint`` set, 02 loads the model from a Lightning-style .ckpt and trains nothing."""
    import torch

    import vitlab

    model = vitlab.create_model("vit_micro_conv4_28", depth=1, embed_dim=16, num_heads=2)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"preset": "vit_micro_conv4_28", "depth": 1, "embed_dim": 16, "num_heads": 2}}
    torch.save(ckpt, tmp_path / "tiny.ckpt")
    nb = execute("02_attention_maps.ipynb", {"data_dir": str(tmp_path), "checkpoint": str(tmp_path / "tiny.ckpt"),
                                             "n_images": 2})
    assert "tiny: validation accuracy" in stdout(nb)
    assert len(outputs(nb, "image/png")) >= 4
