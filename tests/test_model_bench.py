"""tools/bench_model.py: the JSON report of the tiny model on the CPU, the peak table, bad input."""
import json

import pytest

from conftest import ROOT, load_tool, run_tool


def test_tiny_on_cpu_reports_throughput_memory_and_flops():
    proc = run_tool("tools/bench_model.py", "--config", "configs/model/tiny.yaml", "--device", "cpu",
                    "--input-size", "64", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--json")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["channels_last"] is False
    assert r["parameters"] == 1045908 and r["images_per_s"] > 0 and r["peak_memory_mb"] > 0
    # backward costs about twice the forward: weight and input gradients of every conv
    assert 2.5 < r["gflops_forward_backward_per_image"] / r["gflops_forward_per_image"] < 3.5
    assert r["fraction_of_bf16_peak"] is None and r["bf16_peak_tflops"] is None


def test_flops_scale_with_the_input_area():
    from core.config import from_dict, load_yaml
    from model.config import ModelConfig
    count = load_tool("bench_model").count_flops
    tiny = from_dict(ModelConfig, load_yaml(ROOT / "configs/model/tiny.yaml"))
    small, large = count(tiny, 50, 64), count(tiny, 50, 128)
    assert large["forward"] == pytest.approx(4 * small["forward"], rel=0.02)  # all convolutions
    assert large["forward_backward"] == pytest.approx(4 * small["forward_backward"], rel=0.02)


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("Some Future GPU", None)])
def test_bf16_peak_table(name, peak):
    assert load_tool("bench_model").bf16_peak(name) == peak


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("width: 32\nstacks: 2\n")
    for args, message in ((["--config", "configs/model/tiny.yaml", "--input-size", "100"], "multiple of 64"),
                          (["--config", bad], "unknown key(s) stacks"),
                          (["--config", tmp_path / "none.yaml"], "no such config file")):
        proc = run_tool("tools/bench_model.py", *args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
