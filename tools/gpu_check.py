#!/usr/bin/env python
"""The first run on a GPU machine, in one command: about 8 minutes on one H100/H200.

    python tools/gpu_check.py [--json] [--work DIR] [--budget-s 480]

It refuses, with one line and exit status 2, unless torch was built with CUDA and sees a GPU:
a CPU build of torch satisfies the `torch==` pin, skips every GPU test and still looks green.
Then, in this order, each step within what is left of the budget (a step cut short is reported,
the others still run):

  gpu_tests       pytest -m gpu: every gpu-marked test (CuPy kernel, GPU pipeline, compiled bf16
                  step, CUDA grouping, the run guards); a skipped one counts as a failure here
  shards          tools/make_shards.py on data/sample (train; train repeated x40 for the rates)
  bench_pipeline  tools/bench_pipeline.py --device gpu at 512, targets included (goal >= 4,000 images/s)
  bench_model     tools/bench_model.py, the paper config (configs/model/imhn.yaml, 512, bf16)
  train           torchrun, configs/imhn512.yaml, 200 steps: images/s, data wait (goal <= 2%),
                  GPU busy (goal >= 95%), memory, from OUT/log.jsonl (the first interval is warm-up)
  overfit         torchrun, configs/overfit.yaml on the sample's train shards, then eval.py on
                  the same shards: AP (goal >= 0.8)

It prints each step's outcome, the rows to paste into BENCHMARKS.md, and with --json one JSON
object as the last line of stdout. Exit status 0 when every step ran and worked, 1 otherwise; a
goal missed is reported ("goal_met": false), not a failure. Only
subprocesses and torch.cuda queries that torch 2.11 also has are used, so it runs on the GPU
machine's torch as well as on the pinned one.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402
from datetime import date  # noqa: E402

from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402

SAMPLE = ROOT / "data" / "sample"
REPEAT = 40             # copies of the sample's train split for the rates: 1,120 images, one epoch > 200 steps
TRAIN_STEPS = 200
# seconds each step may take at most (it also gets no more than what is left of the budget)
CAPS = {"gpu_tests": 170, "shards": 40, "bench_pipeline": 60, "bench_model": 60, "train": 110, "overfit": 240}
GOALS = {"pipeline_images_per_s": 4000, "data_wait": 0.02, "gpu_util": 95, "ap": 0.8}


def require_cuda():
    """(torch, facts about the CUDA stack); UserError without a CUDA build of torch and a GPU."""
    import torch
    if torch.version.cuda is None:
        raise UserError(f"torch {torch.__version__} is a CPU build (torch.version.cuda is None): "
                        f"install a CUDA build of torch to check the GPU path")
    if not torch.cuda.is_available():
        raise UserError(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: "
                        f"check the driver and CUDA_VISIBLE_DEVICES")
    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
             "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    for name, probe in (("cupy", _cupy_facts), ("dali", _dali_version)):
        try:
            facts.update(probe())
        except Exception as e:  # reported, and the steps that need it fail with their own message
            facts[f"{name}_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return facts


def _cupy_facts() -> dict:
    import cupy
    from cupy_backends.cuda.libs import nvrtc
    return {"cupy": cupy.__version__, "cupy_cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "nvrtc": ".".join(map(str, nvrtc.getVersion()))}


def _dali_version() -> dict:
    import nvidia.dali
    return {"dali": nvidia.dali.__version__}


def run_command(args, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command from the repo root in its own process group; past `timeout` the whole group
    (torchrun and its workers) is killed and TimeoutError raised; with `check` a non-zero exit
    raises RuntimeError with the last line it printed."""
    proc = subprocess.Popen([str(a) for a in args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"{_name(args)}: still running after {timeout:.0f} s, stopped") from None
    if check and proc.returncode != 0:
        tail = (err.strip() or out.strip()).splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{_name(args)} exited {proc.returncode}: {tail[0]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _name(args) -> str:
    """The command without the interpreter, shortened: for messages."""
    return " ".join(str(a) for a in args[1:5]) + (" ..." if len(args) > 5 else "")


def last_json(stdout: str) -> dict:
    """The JSON object a command's --json printed as its last line."""
    return json.loads(stdout.strip().splitlines()[-1])


def junit_counts(path) -> dict:
    """{"tests", "failures", "errors", "skipped", "failed": [names]} of a pytest --junitxml file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
                        if case.find("failure") is not None or case.find("error") is not None]
    counts["skipped_tests"] = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
                               if case.find("skipped") is not None]
    return counts


def training_summary(records: list) -> dict:
    """What a run's log.jsonl says about speed and the GPU: the "train" lines after the first
    (its interval holds start-up and cuDNN's benchmarking), averaged; memory as the peak."""
    lines = [r for r in records if r.get("kind") == "train"]
    steady = lines[1:] or lines
    if not steady:
        raise RuntimeError("log.jsonl has no train lines")

    def mean(key):
        values = [r[key] for r in steady if r.get(key) is not None]
        return round(statistics.fmean(values), 4) if values else None

    def peak(key):
        values = [r[key] for r in steady if r.get(key) is not None]
        return max(values) if values else None

    return {"steps": lines[-1]["step"], "images_per_s": mean("images_per_s"), "step_ms": mean("step_ms"),
            "data_wait": mean("data_wait"), "gpu_util": mean("gpu_util"), "gpu_mem_gib": peak("gpu_mem_gib"),
            "gpu_reserved_gib": peak("gpu_reserved_gib"), "final_loss": steady[-1].get("loss")}


def repeat_annotations(src: Path, dst: Path, times: int):
    """A COCO json listing every image `times` times under new ids (same files): a larger split
    from the sample, so that rates are not measured over 3-batch epochs."""
    data = json.loads(src.read_text())
    step = max([im["id"] for im in data["images"]] + [a["id"] for a in data["annotations"]]) + 1
    data["images"] = [{**im, "id": im["id"] + n * step} for n in range(times) for im in data["images"]]
    data["annotations"] = [{**a, "id": a["id"] + n * step, "image_id": a["image_id"] + n * step}
                           for n in range(times) for a in data["annotations"]]
    dst.write_text(json.dumps(data))


# -- the steps ------------------------------------------------------------------------------------
def step_gpu_tests(work: Path, timeout: float) -> dict:
    report = work / "gpu_tests.xml"
    proc = run_command([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}"], timeout, check=False)
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}): "
                           f"{(proc.stdout.strip().splitlines() or ['no output'])[-1]}")
    counts = junit_counts(report)
    counts["ok"] = counts["tests"] > 0 and not (counts["failures"] or counts["errors"] or counts["skipped"])
    return counts


def step_shards(work: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    annotations = SAMPLE / "annotations" / "person_keypoints_train2017.json"
    repeated = work / f"train_x{REPEAT}.json"
    repeat_annotations(annotations, repeated, REPEAT)
    for name, ann in (("train", annotations), ("train_big", repeated)):
        run_command([sys.executable, "tools/make_shards.py", "--images", SAMPLE / "train2017",
                     "--annotations", ann, "--out", work / name, "--split", "train"],
                    deadline - time.monotonic())
    return {"ok": True, "train": str(work / "train"), "train_big": str(work / "train_big")}


def step_bench_pipeline(work: Path, timeout: float) -> dict:
    proc = run_command([sys.executable, "tools/bench_pipeline.py", "--shards", work / "train_big",
                        "--device", "gpu", "--batch-size", 128, "--steps", 8, "--rounds", 2,
                        "--skip-classic", "--json"], timeout)
    result = last_json(proc.stdout)
    return {**result, "ok": True, "goal_met": result["dali_images_per_s"] >= GOALS["pipeline_images_per_s"]}


def step_bench_model(work: Path, timeout: float) -> dict:
    proc = run_command([sys.executable, "tools/bench_model.py", "--config", "configs/model/imhn.yaml",
                        "--device", "cuda", "--input-size", 512, "--json"], timeout)
    return {**last_json(proc.stdout), "ok": True}


def torchrun(*args) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "train_ddp.py", *args]


def step_train(work: Path, timeout: float) -> dict:
    from training.log import read_jsonl
    out = work / "imhn512"
    run_command(torchrun("--config", "configs/imhn512.yaml", "--shards", work / "train_big", "--out", out,
                         "--max-steps", TRAIN_STEPS), timeout)
    result = training_summary(read_jsonl(out / "log.jsonl"))
    result["ok"] = result["steps"] == TRAIN_STEPS and result["final_loss"] is not None
    result["goal_met"] = (result["data_wait"] is not None and result["data_wait"] <= GOALS["data_wait"]
                          and result["gpu_util"] is not None and result["gpu_util"] >= GOALS["gpu_util"])
    return result


def step_overfit(work: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    shards, out = work / "train", work / "overfit"
    started = time.monotonic()
    run_command(torchrun("--config", "configs/overfit.yaml", "--shards", shards, "--val-shards", shards,
                         "--out", out), deadline - time.monotonic())
    train_s = time.monotonic() - started
    proc = run_command([sys.executable, "eval.py", "--weights", out / "last.pt", "--shards", shards, "--json"],
                       deadline - time.monotonic())
    stats = last_json(proc.stdout)
    return {"ok": True, "goal_met": stats["AP"] >= GOALS["ap"], "train_s": round(train_s, 1),
            **{k: stats[k] for k in ("AP", "AP50", "AP75", "AR", "images", "images_per_s") if k in stats}}


STEPS = (("gpu_tests", step_gpu_tests), ("shards", step_shards), ("bench_pipeline", step_bench_pipeline),
         ("bench_model", step_bench_model), ("train", step_train), ("overfit", step_overfit))
NEEDS_SHARDS = ("bench_pipeline", "train", "overfit")


def run_steps(work: Path, budget_s: float) -> dict:
    """Each step's result dict: "ok" (it ran and worked), "goal_met" where the step has a goal,
    "seconds", and "error" when it failed."""
    deadline = time.monotonic() + budget_s
    results = {}
    for name, fn in STEPS:
        left = deadline - time.monotonic()
        if left < 5:
            results[name] = {"ok": False, "error": "not run: the time budget was spent"}
        elif name in NEEDS_SHARDS and not results.get("shards", {}).get("ok"):
            results[name] = {"ok": False, "error": "not run: no shards"}
        else:
            started = time.monotonic()
            try:
                results[name] = fn(work, min(CAPS[name], left))
            except Exception as e:  # a failed step is reported; the others still run
                results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
            results[name]["seconds"] = round(time.monotonic() - started, 1)
        r = results[name]
        verdict = "FAILED" if not r["ok"] else {False: "ok, goal missed", True: "ok, goal met"}.get(r.get("goal_met"), "ok")
        print(f"{name}: {verdict}: {_brief(r)}", flush=True)
    return results


def _brief(r: dict) -> str:
    keys = ("error", "tests", "failures", "errors", "skipped", "dali_images_per_s", "images_per_s",
            "fraction_of_bf16_peak", "peak_memory_mb", "data_wait", "gpu_util", "gpu_mem_gib", "AP", "seconds")
    return ", ".join(f"{k} {r[k]}" for k in keys if r.get(k) is not None)


def markdown_rows(facts: dict, results: dict) -> list:
    """The lines to paste into BENCHMARKS.md: a heading, then a table row (what | result |
    command) for each step that measured something."""
    rows = [f"## {date.today().isoformat()}, {facts.get('gpu', 'GPU')} (torch {facts.get('torch')}, CUDA "
            f"{facts.get('torch_cuda')}, CuPy {facts.get('cupy')}, DALI {facts.get('dali')})", "",
            "| what | result | command |", "|---|---|---|"]
    for name, cells in (("gpu_tests", _tests_row), ("bench_pipeline", _pipeline_row), ("bench_model", _model_row),
                        ("train", _train_row), ("overfit", _overfit_row)):
        r = results.get(name, {})
        if r.get("ok") or "tests" in r:
            rows.append("| {} | {} | `{}` |".format(*cells(r)))
    return rows


def _tests_row(t):
    passed = t["tests"] - t["failures"] - t["errors"] - t["skipped"]
    return ("GPU tests", f"{passed} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped",
            "pytest -m gpu")


def _pipeline_row(p):
    return (f"data pipeline with targets, GPU, sample x{REPEAT}, batch {p['batch_size']} at {p['input_size']}",
            f"{p['dali_images_per_s']:.0f} images/s (goal ≥ 4,000); {_number(p.get('gpu_memory_gib'), ' GiB')} "
            f"on the device",
            f"python tools/bench_pipeline.py --shards DIR --device gpu --batch-size {p['batch_size']} --skip-classic --json")


def _model_row(m):
    frac = m.get("fraction_of_bf16_peak")
    return (f"IMHN paper config, forward+backward, batch {m['batch_size']} at {m['input_size']}, {m['dtype']}, "
            f"channels_last",
            f"{m['images_per_s']:.1f} images/s, peak {m['peak_memory_mb']:.0f} MB, {m['achieved_tflops']} TFLOP/s"
            + (f" = {100 * frac:.1f}% of bf16 peak" if frac else ""),
            "python tools/bench_model.py --config configs/model/imhn.yaml --device cuda --json")


def _train_row(r):
    return (f"training, paper config, 1 GPU, {r['steps']} steps on sample x{REPEAT}",
            f"{r['images_per_s']:.1f} images/s, {r['step_ms']:.0f} ms/step, data wait {_percent(r['data_wait'])} "
            f"(goal ≤ 2%), GPU busy {_number(r['gpu_util'], '%')} (goal ≥ 95%), peak {_number(r['gpu_mem_gib'], ' GiB')}",
            f"torchrun --nproc_per_node=1 train_ddp.py --config configs/imhn512.yaml --shards DIR --max-steps {TRAIN_STEPS}")


def _overfit_row(o):
    return ("overfit recipe on the sample's train split, evaluated on the same images",
            f"AP {o['AP']:.3f} (goal ≥ 0.8), training {o['train_s']:.0f} s",
            "torchrun --nproc_per_node=1 train_ddp.py --config configs/overfit.yaml --shards S --val-shards S "
            "--out O; python eval.py --weights O/last.pt --shards S --json")


def _percent(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _number(x, unit):
    return "n/a" if x is None else f"{x:.1f}{unit}"


def main(argv=None):
    p = ArgumentParser(description="Check the GPU path end to end and measure it (one GPU, ~8 minutes).")
    p.add_argument("--work", type=Path, help="folder for shards, runs and reports (default: a temporary one)")
    p.add_argument("--budget-s", type=float, default=480, help="seconds for all steps together (default 480)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    facts = require_cuda()
    print(", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = run_steps(work, args.budget_s)
    rows = markdown_rows(facts, results)
    print("\nfor BENCHMARKS.md:\n" + "\n".join(rows))
    ok = all(r["ok"] for r in results.values())
    goals = all(r.get("goal_met", True) for r in results.values())
    if args.json:
        print(json.dumps({"ok": ok, "goals_met": goals, **facts, "steps": results, "benchmarks_md": rows}))
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main)
