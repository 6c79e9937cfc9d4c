"""``vitlab bench``: vitlab against timm's VisionTransformer, measured in one process on one machine.

For one model config and batch size it measures, interleaved (A, B, B, A, ... so neither side always runs first,
when the machine is warmer or busier), over several repeats:

* training steps (forward + backward + AdamW) and inference, img/s, vitlab and timm with identical shapes and
  weights, eager and (``--compile``) torch.compile, plus onnxruntime CPU inference (``--onnx``);
* FLOPs per image (analytic, ``vitlab.models.flops``), achieved TFLOP/s and MFU against a large matmul timed on
  the same device in the same run, and against the data-sheet peak of known GPUs;
* peak memory (CUDA ``max_memory_allocated``; the process's max RSS on CPU);
* Lightning's overhead (``--lightning-overhead``): the same training steps through ``Trainer.fit`` against a bare
  PyTorch loop over the same in-memory data, steady steps (2..N) compared, each run's fixed cost reported apart.

    vitlab bench --model vit_micro_patch4_28 --batch-size 128 --threads 2 --out bench.json
    python -m vitlab.tools.bench --model vit_small_patch16_224 --device cuda --precision bf16 --compile

This module is the command and its report; the candidates, steps and timing are in ``vitlab.tools.bench_timing``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from vitlab import runtime as machine
from vitlab.models.flops import model_stats
from vitlab.models.layers import explicit_attention_pays
from vitlab.models.overrides import add_set_argument, parse_overrides
from vitlab.models.registry import get_config
from vitlab.tools.bench_timing import (as_run, build_models, infer_fn, interleaved, lightning_overhead, onnx_infer_fn,
                                       paired_stats, summarise, train_step_fn)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitlab bench", description="Throughput, FLOP/s, MFU and memory of a "
                                "vitlab model against timm's VisionTransformer, interleaved in one process.")
    p.add_argument("--model", default=None, help="preset name (vitlab.list_models()); default ViTConfig's")
    add_set_argument(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on a CUDA GPU with bf16, else fp32")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile of both models")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="torch.compile mode (max-autotune* also tunes the matmul kernels; slow to compile)")
    p.add_argument("--onnx", action="store_true", help="also measure onnxruntime CPU inference")
    p.add_argument("--lightning-overhead", action="store_true", help="also measure Trainer.fit vs a bare loop")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input (conv stems)")
    p.add_argument("--compare-channels-last", action="store_true",
                   help="also measure a channels_last copy of vitlab against the contiguous one, interleaved")
    p.add_argument("--no-timm", action="store_true", help="vitlab alone")
    p.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    p.add_argument("--no-infer", action="store_true", help="skip the inference measurement")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per candidate (median reported)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per candidate first")
    p.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no table")
    return p


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10  # bytes on macOS, KiB on Linux


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark described by ``argv`` (default: the command line); returns the results."""
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "repeats", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.lightning_overhead and args.steps < 2:
        raise SystemExit("--lightning-overhead needs --steps >= 2 (the first step is set-up, not timed as steady)")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    notes: list[str] = []
    precision, note = machine.resolve_precision(args.precision, device.type)
    if note:
        warnings.warn(note, stacklevel=2)
        notes.append(note)
    if args.compile and explicit_attention_pays(device, compiled=True):
        notes.append("vitlab compiled runs its explicit attention path (on a CPU, as model.compile does in training)")
    tf32 = False
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if precision == "fp32":  # as the CLI does: TF32 tensor cores for fp32 matmuls
            torch.set_float32_matmul_precision("high")
            tf32 = True
    torch.manual_seed(args.seed)
    cfg = get_config(args.model, **parse_overrides(args.set))
    if cfg.num_classes == 0:
        raise SystemExit("num_classes=0 has no head to train; set num_classes")
    stats = model_stats(cfg)
    fwd_flops = stats["gflops"] * 1e9
    train_flops = stats["train_gflops"] * 1e9
    name = machine.device_name(device)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    # the device's practical peak, measured now, and its data sheet
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak_tflops = machine.measure_matmul_tflops(device, dtype)
    sheet = machine.datasheet_peak_tflops(name, "bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")) \
        if device.type == "cuda" else None

    models = build_models(cfg, device, args.channels_last, not args.no_timm, notes, args.compare_channels_last)
    B = args.batch_size
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(B, cfg.in_chans, cfg.img_size, cfg.img_size, device=device).contiguous(memory_format=fmt)
    inputs = {key: x.contiguous(memory_format=torch.channels_last) if key.endswith("channels_last") else x
              for key in models}
    y = torch.randint(0, cfg.num_classes, (B,), device=device)
    images = B * args.steps
    variants = [False] + ([True] if args.compile else [])

    result: dict[str, Any] = {
        "model": args.model, "config": cfg.to_dict(), "batch_size": B,
        "device": {"type": device.type, "name": name, "threads": torch.get_num_threads(),
                   "loadavg_before": load_before},
        "precision": precision, "requested_precision": args.precision, "tf32": tf32, "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "channels_last": args.channels_last, "compare_channels_last": args.compare_channels_last,
        "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup,
        "versions": _versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "flops": {"params_m": stats["params_m"], "tokens": stats["tokens"], "forward_gflops_per_img": stats["gflops"],
                  "train_gflops_per_img": stats["train_gflops"]},
        "peak": {"matmul_tflops": peak_tflops, "matmul_dtype": str(dtype).removeprefix("torch."),
                 "datasheet_tflops": sheet},
        "train": {}, "infer": {}, "ratios": {}, "notes": notes,
    }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm / inductor chatter
        if not args.no_train:
            for compiled in variants:
                fns = {}
                for key, m in models.items():
                    try:
                        fns[key] = train_step_fn(as_run(m, key, compiled, device), inputs[key], y, precision,
                                                 compiled, args.compile_mode)
                    except Exception as err:  # torch.compile without a working compiler
                        notes.append(f"train {key} compiled={compiled} skipped: {type(err).__name__}: {err}")
                times, mem = _guarded(interleaved, fns, args, device, notes, f"train compiled={compiled}")
                for key, t in times.items():
                    label = key + ("_compiled" if compiled else "")
                    result["train"][label] = summarise(t, images, train_flops, peak_tflops, sheet, mem[key])
        if not args.no_infer:
            for compiled in variants:
                fns = {key: infer_fn(as_run(m, key, compiled, device) if compiled else m, inputs[key], precision,
                                     compiled, args.compile_mode) for key, m in models.items()}
                if args.onnx and not compiled:
                    with tempfile.TemporaryDirectory() as folder:
                        try:
                            fns["onnxruntime"] = onnx_infer_fn(models["vitlab"], x, torch.get_num_threads(), folder)
                        except Exception as err:
                            notes.append(f"onnxruntime skipped: {type(err).__name__}: {err}")
                times, mem = _guarded(interleaved, fns, args, device, notes, f"infer compiled={compiled}")
                for key, t in times.items():
                    label = key + ("_compiled" if compiled else "")
                    ort_cpu = key == "onnxruntime" and device.type != "cpu"  # it ran on the CPU, not the GPU
                    result["infer"][label] = summarise(t, images, fwd_flops, peak_tflops,
                                                       None if ort_cpu else sheet, mem[key])
                    if ort_cpu:
                        result["infer"][label].update(mfu=None, device="cpu")
        if args.lightning_overhead:
            result["lightning"] = lightning_overhead(models["vitlab"], cfg, B, args.steps, args.repeats, device,
                                                     precision)

    result["ratios"] = _ratios(result)
    result["paired_ratios"] = _paired_ratios(result)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["device"]["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if not args.quiet:
        print_report(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def _guarded(fn, fns, args, device, notes, what):
    """``interleaved`` over ``fns``; a candidate that fails (e.g. torch.compile without a compiler) is dropped."""
    while fns:
        try:
            return fn(fns, args.steps, args.warmup, args.repeats, device)
        except Exception as err:
            bad = _first_failing(fns)
            notes.append(f"{what}: {bad} dropped: {type(err).__name__}: {str(err)[:300]}")
            fns = {k: v for k, v in fns.items() if k != bad}
    return {}, {}


def _first_failing(fns) -> str:
    for name, fn in fns.items():
        try:
            fn()
        except Exception:
            return name
    return next(iter(fns))


def _ratios(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for mode in ("train", "infer"):
        r = result[mode]
        rate = {k: v["img_s"] for k, v in r.items()}
        for a, b, label in RATIO_PAIRS:
            if a in rate and b in rate:
                out[f"{mode} {label}"] = rate[a] / rate[b]
    return out


RATIO_PAIRS = [("vitlab", "timm", "vitlab/timm"), ("vitlab_compiled", "timm_compiled", "vitlab/timm compiled"),
               ("vitlab_compiled", "timm", "vitlab compiled/timm eager"),
               ("vitlab_compiled", "vitlab", "vitlab compiled/eager"),
               ("vitlab_channels_last", "vitlab", "vitlab channels_last/contiguous"),
               ("onnxruntime", "vitlab", "onnxruntime/vitlab eager")]


def _paired_ratios(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-repeat ratios of two candidates timed in the same round (a pair shares the machine's state then, so
    drift and other load cancel better than in the ratio of medians): their median, quartiles and values.
    Compiled and eager run in separate rounds, so their pairs are only as close as the round order."""
    out = {}
    for mode in ("train", "infer"):
        r = result[mode]
        for a, b, label in RATIO_PAIRS:
            if a in r and b in r and len(r[a]["img_s_runs"]) == len(r[b]["img_s_runs"]):
                out[f"{mode} {label}"] = paired_stats(r[a]["img_s_runs"], r[b]["img_s_runs"])
    return out



def _versions() -> dict[str, str]:
    import lightning
    import timm
    return {"torch": torch.__version__, "timm": timm.__version__, "lightning": lightning.__version__,
            "python": sys.version.split()[0]}


def print_report(result: dict[str, Any]) -> None:
    """A readable table of ``result`` (rich)."""
    from rich.console import Console
    from rich.table import Table

    d, f, p = result["device"], result["flops"], result["peak"]
    console = Console(width=max(Console().width, 120))
    sheet = f", data sheet {p['datasheet_tflops']:.0f}" if p["datasheet_tflops"] else ""
    console.print(f"[bold]{result['model'] or 'ViTConfig'}[/] batch {result['batch_size']}, {result['precision']}"
                  f"{' (TF32)' if result['tf32'] else ''} on {d['name']} ({d['type']}, {d['threads']} threads); "
                  f"{f['params_m']:.2f}M params, {f['forward_gflops_per_img']:.3f} GFLOPs/img forward; "
                  f"matmul peak {p['matmul_tflops']:.2f} TFLOP/s measured{sheet}; load {d['loadavg_before']}"
                  + (f"; torch.compile mode {result['compile_mode']}" if result.get("compile_mode") else ""))
    table = Table(show_lines=False)
    for col in ("mode", "impl", "img/s", "runs min-max", "TFLOP/s", "MFU", "MFU sheet", "peak MB"):
        table.add_column(col, justify="left" if col in ("mode", "impl") else "right")
    for mode in ("train", "infer"):
        for impl, r in result[mode].items():
            runs = r["img_s_runs"]
            table.add_row(mode, impl, f"{r['img_s']:.1f}", f"{min(runs):.1f}-{max(runs):.1f}", f"{r['tflops']:.3f}",
                          _pct(r["mfu"]), _pct(r["mfu_datasheet"]),
                          f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] else "-")
    console.print(table)
    paired = result.get("paired_ratios", {})
    for k, v in result["ratios"].items():
        pr = paired.get(k)
        extra = (f" (paired per round: median {pr['median']:.3f}x, quartiles {pr['q25']:.3f}-{pr['q75']:.3f})"
                 if pr else "")
        console.print(f"  {k}: [bold]{v:.3f}x[/]{extra}")
    if "lightning" in result:
        lt = result["lightning"]
        pr = lt["paired"]
        console.print(f"  Lightning Trainer.fit vs bare loop, steps 2-{lt['steps']}: {lt['fit_steady_s']:.3f} s vs "
                      f"{lt['bare_steady_s']:.3f} s = [bold]{lt['ratio']:.3f}x[/] ({lt['overhead_pct']:+.1f} %, "
                      f"{lt['overhead_ms_per_step']:+.2f} ms/step; paired per round: median {pr['median']:.3f}x, "
                      f"quartiles {pr['q25']:.3f}-{pr['q75']:.3f}); fixed cost per run (set-up, first step, "
                      f"teardown) {lt['fixed_fit_s']:.3f} s vs {lt['fixed_bare_s']:.3f} s")
    console.print(f"  peak RSS {result['peak_rss_mb']:.0f} MB")
    for n in result["notes"]:
        console.print(f"  [yellow]note:[/] {n}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


if __name__ == "__main__":
    main()
