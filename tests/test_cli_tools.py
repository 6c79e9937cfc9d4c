"""The tool subcommands are dispatched before LightningCLI and each answers --help."""
import pytest

from vitlab.cli import TOOLS, main


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_tool_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert f"vitlab {name}" in capsys.readouterr().out or name in capsys.readouterr().out


def test_tool_runs_through_cli(tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "vit_micro_patch4_28", "--set", "depth=1", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
