"""tools/gpu_check.py: refuses cleanly without CUDA; its readers of pytest's report, the training
log and the sample repetition, and the BENCHMARKS.md rows, on made-up inputs."""
import json
from collections import Counter

from conftest import SAMPLE, load_tool, run_tool


def test_without_cuda_it_refuses_with_one_line_and_exit_2():
    proc = run_tool("tools/gpu_check.py", "--json", check=False, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torch ") and ("CPU build" in lines[0] or "no GPU" in lines[0])


def test_training_summary_skips_the_warm_up_interval():
    gpu_check = load_tool("gpu_check")
    records = [{"kind": "start", "step": 0},
               {"kind": "train", "step": 20, "images_per_s": 5.0, "step_ms": 800, "data_wait": 0.5,
                "gpu_util": 40, "gpu_mem_gib": 30.0, "gpu_reserved_gib": 33.0, "loss": 9.0},
               {"kind": "train", "step": 40, "images_per_s": 50.0, "step_ms": 80, "data_wait": 0.01,
                "gpu_util": 98, "gpu_mem_gib": 20.0, "gpu_reserved_gib": 31.0, "loss": 2.0},
               {"kind": "train", "step": 60, "images_per_s": 52.0, "step_ms": 76, "data_wait": 0.03,
                "gpu_util": None, "gpu_mem_gib": 21.0, "gpu_reserved_gib": 31.0, "loss": 1.5}]
    s = gpu_check.training_summary(records)
    assert s == {"steps": 60, "images_per_s": 51.0, "step_ms": 78.0, "data_wait": 0.02, "gpu_util": 98.0,
                 "gpu_mem_gib": 21.0, "gpu_reserved_gib": 31.0, "final_loss": 1.5}


def test_junit_counts_name_failed_and_skipped_tests(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="test_skip"><skipped message="y"/></testcase>'
        '</testsuite></testsuites>')
    c = load_tool("gpu_check").junit_counts(report)
    assert (c["tests"], c["failures"], c["errors"], c["skipped"]) == (3, 1, 0, 1)
    assert c["failed"] == ["tests.test_a::test_bad"] and c["skipped_tests"] == ["tests.test_b::test_skip"]


def test_repeated_sample_keeps_every_annotation_with_its_image(tmp_path):
    src = SAMPLE / "annotations" / "person_keypoints_train2017.json"
    load_tool("gpu_check").repeat_annotations(src, tmp_path / "x3.json", 3)
    a, b = json.loads(src.read_text()), json.loads((tmp_path / "x3.json").read_text())
    ids = [im["id"] for im in b["images"]]
    assert len(ids) == len(set(ids)) == 3 * len(a["images"])
    assert len({x["id"] for x in b["annotations"]}) == len(b["annotations"]) == 3 * len(a["annotations"])
    # each copy of an annotation points at a copy of its own image (the same file)
    def files_of(data):
        names = {im["id"]: im["file_name"] for im in data["images"]}
        return Counter(names[x["image_id"]] for x in data["annotations"])
    assert files_of(b) == Counter({f: 3 * n for f, n in files_of(a).items()})


def test_benchmark_rows_from_step_results():
    gpu_check = load_tool("gpu_check")
    facts = {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cupy": "14.2.0", "dali": "2.4.0"}
    results = {
        "gpu_tests": {"ok": True, "tests": 14, "failures": 0, "errors": 0, "skipped": 0},
        "bench_pipeline": {"ok": True, "dali_images_per_s": 5123.4, "batch_size": 128, "input_size": 512,
                           "gpu_memory_gib": 3.2},
        "bench_model": {"ok": True, "images_per_s": 61.2, "batch_size": 4, "input_size": 512, "dtype": "bf16",
                        "peak_memory_mb": 20480, "achieved_tflops": 97.1, "fraction_of_bf16_peak": 0.0982},
        "train": {"ok": True, "steps": 200, "images_per_s": 58.0, "step_ms": 69, "data_wait": 0.004,
                  "gpu_util": 97.5, "gpu_mem_gib": 21.3},
        "overfit": {"ok": False, "error": "TimeoutError: ..."},
    }
    rows = gpu_check.markdown_rows(facts, results)
    assert rows[0].startswith("## ") and "NVIDIA H200" in rows[0] and rows[2] == "| what | result | command |"
    table = rows[4:]
    assert len(table) == 4 and all(r.startswith("| ") and r.count(" | ") >= 2 for r in table)
    assert "14 passed, 0 failed, 0 skipped" in table[0] and "5123 images/s" in table[1]
    assert "9.8% of bf16 peak" in table[2] and "data wait 0.4%" in table[3] and "GPU busy 97.5%" in table[3]
