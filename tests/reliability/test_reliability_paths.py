"""Paths built from user input stay under the runs directory: a run name cannot lead out of it."""
import os

import pytest

from vitlab import cli


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/vitlab_absolute_run", "a/../../b"])
def test_run_name_cannot_leave_the_runs_dir(tmp_path, capsys, name):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-c", "configs/quickstart.yaml", "--runs_dir", str(runs), "--run_name", name])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: run_name") and repr(name) in err
    assert not runs.exists() and not os.path.exists("/tmp/vitlab_absolute_run")


def test_a_symlinked_run_name_leading_out_is_refused(tmp_path, capsys):
    runs, outside = tmp_path / "runs", tmp_path / "outside"
    runs.mkdir()
    outside.mkdir()
    (runs / "link").symlink_to(outside)
    with pytest.raises(SystemExit):
        cli.main(["fit", "-c", "configs/quickstart.yaml", "--runs_dir", str(runs), "--run_name", "link"])
    assert "leads outside runs_dir" in capsys.readouterr().err
    assert not any(outside.iterdir())
