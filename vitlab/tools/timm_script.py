"""``vitlab timm-script SCRIPT [ARGS]``: run one of timm's own scripts (train.py, validate.py, benchmark.py,
inference.py from timm's repository) with the ``vitlab_`` models registered.

timm's scripts build models by name through ``timm.create_model``; they only need the vitlab entrypoints to be in
timm's registry, which ``import vitlab`` does. The script then runs as ``python SCRIPT ARGS`` would, with the
models' own data config (``--model vitlab_vit_micro_patch4_28`` reads 1x28x28 and Fashion-MNIST's mean/std).

    vitlab timm-script benchmark.py --model vitlab_vit_micro_patch4_28 --bench inference -b 64
    vitlab timm-script validate.py /data/fmnist_folder --model vitlab_vit_micro_patch4_28 --checkpoint w.safetensors
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import vitlab  # noqa: F401  (registers the vitlab_ models in timm)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):  # as argparse: help exits 0, a missing argument 2
        print(f"usage: vitlab timm-script SCRIPT [ARGS ...]\n{__doc__}")
        raise SystemExit(0 if argv else 2)
    script = Path(argv[0])
    if not script.is_file():
        print(f"vitlab timm-script: error: {script} is not a file (give the path of one of timm's scripts, e.g. "
              f"validate.py from timm's repository)", file=sys.stderr)
        return 2
    saved = sys.argv, sys.path[:]
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))  # the script's own imports, as `python SCRIPT` would
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:  # argparse and the scripts exit with their own codes
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, sys.path[:] = saved
    return 0
