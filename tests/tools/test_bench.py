"""vitlab bench end-to-end on a tiny config on CPU (1-2 steps): throughputs, ratios, MFU, memory, Lightning."""
import json
import warnings

import pytest

from vitlab import runtime as machine
from vitlab.tools import bench, bench_timing

TINY = ["--set", "img_size=16", "--set", "patch_size=4", "--set", "in_chans=1", "--set", "num_classes=4",
        "--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2"]
FAST = ["--batch-size", "4", "--repeats", "2", "--steps", "1", "--warmup", "1", "--device", "cpu", "--quiet"]


def test_bench_vs_timm_with_lightning_overhead(tmp_path):
    out = tmp_path / "bench.json"
    r = bench.main(TINY + FAST + ["--steps", "3", "--lightning-overhead", "--out", str(out)])
    assert json.loads(out.read_text())["ratios"] == r["ratios"]
    assert r["device"]["type"] == "cpu" and r["device"]["name"] and r["precision"] == "fp32"
    assert r["flops"]["forward_gflops_per_img"] > 0 and r["peak"]["matmul_tflops"] > 0
    for mode in ("train", "infer"):
        for impl in ("vitlab", "timm"):
            row = r[mode][impl]
            assert row["img_s"] > 0 and len(row["img_s_runs"]) == 2
            assert 0 < row["mfu"] <= 1 and row["mfu_datasheet"] is None
        assert r["ratios"][f"{mode} vitlab/timm"] > 0
    assert r["peak_rss_mb"] > 0
    lt = r["lightning"]
    assert lt["steady_steps"] == 2 and len(lt["fit_steady_s_runs"]) == len(lt["bare_s_runs"]) == 2
    assert 0 < lt["fit_steady_s"] < lt["fit_s"] and 0 < lt["bare_steady_s"] < lt["bare_s"]
    assert lt["ratio"] == pytest.approx(lt["fit_steady_s"] / lt["bare_steady_s"])
    pairs = zip(lt["fit_steady_s_runs"], lt["bare_steady_s_runs"])
    assert lt["paired"]["values"] == pytest.approx([a / b for a, b in pairs])
    assert lt["fixed_fit_s"] == pytest.approx(lt["fit_s"] - lt["fit_steady_s"]) and lt["fixed_bare_s"] > 0
    with pytest.raises(SystemExit, match="steps >= 2"):
        bench.main(TINY + FAST + ["--no-train", "--no-infer", "--lightning-overhead"])


def test_conv_tokenizer_benches_alone_with_a_note():
    r = bench.main(TINY + FAST + ["--set", "tokenizer=conv", "--no-train"])
    assert set(r["infer"]) == {"vitlab"} and r["ratios"] == {}
    assert any("no timm comparison" in n for n in r["notes"])


def test_bf16_on_a_cpu_without_bf16_warns_and_uses_fp32(monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no bf16 units"):
        r = bench.main(TINY + FAST + ["--precision", "bf16", "--no-train", "--no-timm"])
    assert r["precision"] == "fp32" and r["requested_precision"] == "bf16" and r["infer"]["vitlab"]["img_s"] > 0
    assert machine.resolve_precision("auto", "cpu") == ("fp32", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert machine.default_precision() in ("bf16-mixed", "32-true")
    assert machine.default_num_workers() >= 0 and isinstance(machine.cpu_has_bf16(), bool)


def test_datasheet_peaks():
    assert machine.datasheet_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)
    assert machine.datasheet_peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert machine.datasheet_peak_tflops("NVIDIA GeForce RTX 4090", "bf16") == pytest.approx(165.2)
    assert machine.datasheet_peak_tflops("Intel Xeon", "fp32") is None


@pytest.mark.gpu
def test_bench_on_cuda_bf16_compile():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    args = TINY + ["--batch-size", "8", "--repeats", "2", "--steps", "2", "--warmup", "2", "--device", "cuda",
                   "--precision", "auto", "--compile", "--onnx", "--lightning-overhead", "--quiet"]
    r = bench.main(args)
    assert r["device"]["type"] == "cuda" and r["train"]["vitlab"]["peak_mem_mb"] > 0
    assert r["infer"]["onnxruntime"]["device"] == "cpu" and "train vitlab/timm compiled" in r["ratios"]


def test_bf16_on_cpu_follows_a_measurement(monkeypatch):
    """bf16 on a CPU is used only where bf16 matmuls are measured at least as fast as fp32; else a warning."""
    from vitlab import runtime as machine
    assert isinstance(machine.cpu_bf16_is_fast(), bool)
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(machine, "cpu_bf16_is_fast", lambda: False)
    precision, note = machine.resolve_precision("bf16", "cpu")
    assert precision == "fp32" and "slower than fp32" in note
    monkeypatch.setattr(machine, "cpu_bf16_is_fast", lambda: True)
    assert machine.resolve_precision("bf16", "cpu") == ("bf16", None)
    assert machine.resolve_precision("auto", "cpu") == ("fp32", None)


def test_paired_ratios_and_channels_last_comparison():
    r = bench.main(TINY + FAST + ["--set", "tokenizer=conv", "--compare-channels-last", "--no-train"])
    assert set(r["infer"]) == {"vitlab", "vitlab_channels_last"}
    pr = r["paired_ratios"]["infer vitlab channels_last/contiguous"]
    runs = r["infer"]["vitlab_channels_last"]["img_s_runs"], r["infer"]["vitlab"]["img_s_runs"]
    assert pr["values"] == pytest.approx([a / b for a, b in zip(*runs)])
    assert pr["q25"] <= pr["median"] <= pr["q75"] and r["ratios"]["infer vitlab channels_last/contiguous"] > 0
    r = bench.main(TINY + FAST + ["--no-infer"])
    values = r["paired_ratios"]["train vitlab/timm"]["values"]
    assert len(values) == 2 and all(v > 0 for v in values)


def test_compile_mode_reaches_torch_compile(monkeypatch):
    torch = pytest.importorskip("torch")
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    model = torch.nn.Linear(2, 2)
    compile_model = bench_timing.compile_model
    assert compile_model(model, "default") is model and compile_model(model, "max-autotune") is model
    assert seen == [None, "max-autotune"]
    assert bench.build_parser().parse_args(["--compile-mode", "max-autotune-no-cudagraphs"]).compile_mode == \
        "max-autotune-no-cudagraphs"
    with pytest.raises(SystemExit):  # argparse names the bad choice
        bench.build_parser().parse_args(["--compile-mode", "fastest"])
