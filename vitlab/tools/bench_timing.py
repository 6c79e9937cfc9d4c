"""The measuring machinery of ``vitlab bench``: the candidates (vitlab, timm with the same weights, compiled
copies, onnxruntime), their training and inference steps, interleaved timing, and Lightning's overhead against a
bare loop. ``vitlab.tools.bench`` is the command that runs them and reports."""
from __future__ import annotations

import copy
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models.config import ViTConfig
from vitlab.models.layers import explicit_attention_pays, set_fused_attention
from vitlab.models.timm_export import timm_model_args
from vitlab.models.vit import VisionTransformer


# ----------------------------------------------------------------------------------------------- models
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


def paired_stats(a: list[float], b: list[float]) -> dict[str, Any]:
    """Median, quartiles and values of the per-round ratios a[i] / b[i]."""
    values = [x / y for x, y in zip(a, b)]
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q25": q[0], "q75": q[2], "values": values}



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

