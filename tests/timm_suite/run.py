"""The timm tier: timm's own model tests (``tests/test_models.py`` from the sdist of the installed timm) on every
``vitlab_`` model.

    python tests/timm_suite/run.py [extra pytest arguments]

It downloads timm's source distribution for the installed version (PyPI; cached in ``.timm_suite/``), copies its
``tests/test_models.py`` and ``conftest.py``, and runs them on the ``vitlab_`` models (``-k vitlab_``) the way
timm runs them on its own ViT-like models. timm selects those by name and module in two lists, so the copy adds
vitlab's to them, and nothing else:

* ``NON_STD_FILTERS`` gets ``'vitlab_*'`` (timm has ``'vit_*'`` there: token-sequence features, no NCHW output);
* ``FEAT_INTER_FILTERS`` gets ``'registry'``, the module that registers vitlab's models (timm has
  ``'vision_transformer'``): the ``forward_intermediates`` and ``features_only`` tests run on them.

The run fails if a registered ``vitlab_`` model is missing from the collected tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import timm

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".timm_suite"
PATCHES = [  # (text in timm's file, replacement): each must apply exactly once
    ("NON_STD_FILTERS = [\n", "NON_STD_FILTERS = ['vitlab_*',  # vitlab: added by tests/timm_suite/run.py\n"),
    ("FEAT_INTER_FILTERS = [\n", "FEAT_INTER_FILTERS = ['registry',  # vitlab: added by tests/timm_suite/run.py\n"),
]
CONFTEST_HEAD = '''import vitlab  # registers the vitlab_ models before timm's tests list them  (tests/timm_suite/run.py)
import timm


def pytest_collection_modifyitems(session, config, items):
    names = {item.callspec.params.get("model_name") for item in items if hasattr(item, "callspec")}
    missing = sorted(set(timm.list_models("vitlab_*")) - names)
    if missing:
        raise RuntimeError(f"timm's model tests collected nothing for {missing}")


'''


def timm_tests() -> Path:
    """The folder with timm's test_models.py (patched) and conftest.py for the installed timm version."""
    version = timm.__version__
    folder = CACHE / f"timm-{version}"
    if (folder / "test_models.py").is_file():
        return folder
    CACHE.mkdir(exist_ok=True)
    sdist = CACHE / f"timm-{version}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", str(CACHE), f"timm=={version}"], check=True)
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
        source = tar.extractfile(members["tests/test_models.py"]).read().decode()
        conftest = tar.extractfile(members["tests/conftest.py"]).read().decode()
    for old, new in PATCHES:
        if source.count(old) != 1:
            raise RuntimeError(f"timm {version}'s test_models.py has {source.count(old)} x {old!r}; update PATCHES")
        source = source.replace(old, new)
    tmp = CACHE / f"timm-{version}.tmp"
    tmp.mkdir(exist_ok=True)
    (tmp / "test_models.py").write_text(source)
    (tmp / "conftest.py").write_text(CONFTEST_HEAD + conftest)
    tmp.rename(folder)
    return folder


def main(argv: list[str]) -> int:
    folder = timm_tests()
    print(f"timm {timm.__version__}: {folder / 'test_models.py'} on the vitlab_ models", flush=True)
    cmd = [sys.executable, "-m", "pytest", str(folder / "test_models.py"), "-k", "vitlab_", "-q",
           "-p", "no:cacheprovider", "-o", "addopts=", "-W", "ignore::DeprecationWarning",
           "-W", "ignore::FutureWarning", "--rootdir", str(folder), *argv]
    return subprocess.run(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
