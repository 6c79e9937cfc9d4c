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
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models.config import ViTConfig
from vitlab.models.flops import model_stats
from vitlab.models.layers import explicit_attention_pays, set_fused_attention
from vitlab.models.registry import get_config
from vitlab.models.timm_export import timm_model_args
from vitlab.models.vit import VisionTransformer
from vitlab import runtime as machine
from vitlab.tools.onnx_export import parse_overrides

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- models
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def build_timm(model: VisionTransformer) -> nn.Module:
    """timm's ``VisionTransformer`` with ``model``'s shapes, regularisation and weights (patch tokenizer only)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    cfg = model.cfg
    ref = TimmViT(**timm_model_args(cfg), drop_rate=cfg.drop_rate, pos_drop_rate=cfg.drop_rate,
                  proj_drop_rate=cfg.drop_rate, attn_drop_rate=cfg.attn_drop_rate,
                  drop_path_rate=cfg.drop_path_rate)
    state = dict(model.state_dict())
    if cfg.pos_embed == "sincos":  # vitlab keeps sin-cos positions as a non-persistent buffer
        state["pos_embed"] = model.pos_embed.detach().clone()
    ref.load_state_dict(state, strict=True)
    return ref


def build_models(cfg: ViTConfig, device: torch.device, channels_last: bool, with_timm: bool,
                 notes: list[str], compare_channels_last: bool = False) -> dict[str, nn.Module]:
    """``vitlab`` (and ``timm`` with the same weights; ``vitlab_channels_last``, a channels_last copy, when
    ``compare_channels_last``) on ``device``, in channels_last memory format when ``channels_last``."""
    models: dict[str, nn.Module] = {"vitlab": VisionTransformer(cfg)}
    if with_timm:
        try:
            models["timm"] = build_timm(models["vitlab"])
        except ValueError as err:  # a tokenizer other than patch, sequence pooling: nothing to compare with
            notes.append(f"no timm comparison: {err}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {k: m.to(device, memory_format=fmt) for k, m in models.items()}
    if compare_channels_last:
        out["vitlab_channels_last"] = copy.deepcopy(models["vitlab"]).to(device, memory_format=torch.channels_last)
    return out


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as the training module uses it: fused kernels on CUDA, foreach elsewhere."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05, fused=fused or None,
                             foreach=None if fused else True)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def as_run(model: nn.Module, key: str, compiled: bool, device: torch.device) -> nn.Module:
    """A copy of ``model`` set up as it runs in training: vitlab compiled on a CPU takes the explicit attention
    path, as ``ImageClassifier`` does (timm keeps its own default)."""
    model = copy.deepcopy(model)
    if key == "vitlab" and explicit_attention_pays(device, compiled):
        set_fused_attention(model, False)
    return model


def compile_model(model: nn.Module, mode: str = "default") -> Callable[..., torch.Tensor]:
    """``torch.compile(model, mode=mode)``; "default" passes no mode."""
    return torch.compile(model, mode=None if mode == "default" else mode)


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str,
                  compiled: bool, compile_mode: str = "default") -> Callable[[], None]:
    model.train()
    opt = make_optimizer(model, x.device)
    fwd = compile_model(model, compile_mode) if compiled else model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, precision):
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    return step


def infer_fn(model: nn.Module, x: torch.Tensor, precision: str, compiled: bool,
             compile_mode: str = "default") -> Callable[[], None]:
    model.eval()
    fwd = compile_model(model, compile_mode) if compiled else model

    def step() -> None:
        with torch.inference_mode(), autocast(x.device, precision):
            fwd(x)

    return step


def onnx_infer_fn(model: nn.Module, x: torch.Tensor, threads: int, folder: str) -> Callable[[], None]:
    """onnxruntime CPU inference of ``model`` exported with dynamic shapes."""
    import onnxruntime as ort

    from vitlab.tools.onnx_export import export_onnx

    cpu_model = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format)
    path = export_onnx(cpu_model, Path(folder) / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name, feed = session.get_inputs()[0].name, x.float().cpu().contiguous().numpy()
    return lambda: session.run(None, {name: feed})


# ----------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], steps: int, warmup: int, repeats: int,
                device: torch.device) -> tuple[dict[str, list[float]], dict[str, float | None]]:
    """Seconds per ``steps`` calls of each function, interleaved per repeat (order flips every repeat), and the
    peak CUDA memory (MB) while each ran (None on CPU)."""
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {k: [] for k in fns}
    peak: dict[str, float | None] = {k: None for k in fns}
    for name, fn in fns.items():
        for _ in range(warmup):  # compile, kernel selection, allocator warm-up
            fn()
        _sync(device)
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            if cuda:
                mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
                peak[name] = max(peak[name] or 0.0, mb)
    return times, peak


def summarise(times: list[float], images: int, flops_per_img: float, peak_tflops: float,
              datasheet_tflops: float | None, peak_mb: float | None) -> dict[str, Any]:
    rates = [images / t for t in times]
    img_s = statistics.median(rates)
    tflops = img_s * flops_per_img / 1e12
    return {
        "img_s": img_s, "img_s_runs": rates, "tflops": tflops, "mfu": tflops / peak_tflops,
        "mfu_datasheet": tflops / datasheet_tflops if datasheet_tflops else None, "peak_mem_mb": peak_mb,
    }


# ----------------------------------------------------------------------------------------------- Lightning
def lightning_overhead(model: nn.Module, cfg: ViTConfig, batch_size: int, steps: int, repeats: int,
                       device: torch.device, precision: str) -> dict[str, Any]:
    """``steps`` training steps through ``Trainer.fit`` and through a bare loop, interleaved ``repeats`` times
    after one untimed round of each.

    Two figures per run: the steady time of steps 2..``steps`` (the overhead that grows with a run: what the
    ratio compares) and the fixed cost, everything else (Trainer and strategy set-up, the first step, and on a
    GPU Lightning's teardown, which moves the model back to the CPU). Short runs on a fast GPU are dominated by
    the fixed cost, which a real run pays once.
    """
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class BenchModule(L.LightningModule):
        """The least a LightningModule needs: the same step and optimiser as the bare loop."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return make_optimizer(self.net, self.device)

    class StepClock(L.Callback):
        """Device-synchronised clock readings at the end of the first and of the last training step."""

        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx in (0, steps - 1):
                _sync(device)
                self.marks.append(time.perf_counter())

    g = torch.Generator().manual_seed(0)
    n = batch_size * steps
    data = TensorDataset(torch.randn(n, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g),
                         torch.randint(0, cfg.num_classes, (n,), generator=g))
    pin = device.type == "cuda"
    initial = copy.deepcopy(model).to("cpu")

    def loader() -> DataLoader:
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0, pin_memory=pin)

    def run_lightning() -> tuple[float, float]:  # (whole run, steady steps 2..steps) in seconds
        clock = StepClock()
        start = time.perf_counter()
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1, max_steps=steps,
            precision="bf16-mixed" if precision == "bf16" else "32-true", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            callbacks=[clock])
        trainer.fit(BenchModule(copy.deepcopy(initial)), train_dataloaders=loader())
        _sync(device)
        return time.perf_counter() - start, clock.marks[1] - clock.marks[0]

    def run_bare() -> tuple[float, float]:
        start = time.perf_counter()
        net = copy.deepcopy(initial).to(device)
        net.train()
        opt = make_optimizer(net, device)
        marks = []
        for i, (x, y) in enumerate(loader()):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            if i in (0, steps - 1):
                _sync(device)
                marks.append(time.perf_counter())
        _sync(device)
        return time.perf_counter() - start, marks[1] - marks[0]

    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    runs: dict[str, list[tuple[float, float]]] = {"lightning": [], "bare": []}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for r in range(repeats + 1):  # round 0: warm-up (library init, kernel choice), not kept
                for name in ("lightning", "bare") if r % 2 == 0 else ("bare", "lightning"):
                    timing = (run_lightning if name == "lightning" else run_bare)()
                    if r > 0:
                        runs[name].append(timing)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    (fit_runs, fit_steady_runs), (bare_runs, bare_steady_runs) = (
        map(list, zip(*runs[name])) for name in ("lightning", "bare"))
    fit_s, fit_steady = statistics.median(fit_runs), statistics.median(fit_steady_runs)
    bare_s, bare_steady = statistics.median(bare_runs), statistics.median(bare_steady_runs)
    return {"steps": steps, "steady_steps": steps - 1, "fit_s": fit_s, "bare_s": bare_s,
            "fit_steady_s": fit_steady, "bare_steady_s": bare_steady, "fit_s_runs": fit_runs,
            "bare_s_runs": bare_runs, "fit_steady_s_runs": fit_steady_runs, "bare_steady_s_runs": bare_steady_runs,
            "ratio": fit_steady / bare_steady, "overhead_pct": 100 * (fit_steady / bare_steady - 1),
            "paired": paired_stats(fit_steady_runs, bare_steady_runs),
            "overhead_ms_per_step": 1e3 * (fit_steady - bare_steady) / (steps - 1),
            "fixed_fit_s": fit_s - fit_steady, "fixed_bare_s": bare_s - bare_steady}


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitlab bench", description="Throughput, FLOP/s, MFU and memory of a "
                                "vitlab model against timm's VisionTransformer, interleaved in one process.")
    p.add_argument("--model", default=None, help="preset name (vitlab.list_models()); default ViTConfig's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="ViTConfig override")
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


def paired_stats(a: list[float], b: list[float]) -> dict[str, Any]:
    """Median, quartiles and values of the per-round ratios a[i] / b[i]."""
    values = [x / y for x, y in zip(a, b)]
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q25": q[0], "q75": q[2], "values": values}


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
