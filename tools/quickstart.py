#!/usr/bin/env python
"""The whole chain on the bundled sample, on a CPU machine: shards -> training -> eval -> demo.

    python tools/quickstart.py                 # 7 to 17 minutes on 2 CPU cores (machines differ 2.5x)
    python tools/quickstart.py --steps 20      # a quick look that everything runs (what CI tests)

Every step is the real command line a user would type (printed before it runs), so this file
is also the recipe: make_shards for the train and val splits, `torchrun --nproc_per_node=2
train_ddp.py` with configs/overfit.yaml (a small model that memorizes its images, validating on
the val shards), eval.py on the images it trained on and on the val images, tools/plot_log.py
for the curves, demo.py on one val image.

The AP on the training images shows that the chain learns and that eval.py finds what training
taught; the val AP shows that memorizing 28 images generalizes to nothing, and the skeletons
drawn on a val image are poor. The real model is configs/imhn512.yaml trained on COCO
train2017 on GPUs (README: "Full COCO").
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402

from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from core.files import write_text_atomic  # noqa: E402

SAMPLE = Path("data/sample")
DEMO_IMAGE = SAMPLE / "val2017" / "000000214753.jpg"


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/quickstart", help="where everything goes (default runs/quickstart)")
    p.add_argument("--steps", type=int, default=700,
                   help="training steps (default 700, the overfit recipe's: 6 to 15 minutes on 2 cores)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    args = p.parse_args(argv)
    out = Path(args.out)
    py = sys.executable
    shards = {split: out / "shards" / split for split in ("train", "val")}
    for split, folder in shards.items():
        step(py, "tools/make_shards.py", "--images", SAMPLE / f"{split}2017",
             "--annotations", SAMPLE / "annotations" / f"person_keypoints_{split}2017.json",
             "--out", folder, "--split", split)
    train = out / "train"
    step(py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "train_ddp.py",
         "--config", "configs/overfit.yaml", "--shards", shards["train"], "--val-shards", shards["val"],
         "--out", train, "--max-steps", args.steps, "--resume", "auto")  # a rerun continues
    weights = train / "last.pt"
    metrics = {split: json.loads(step(py, "eval.py", "--weights", weights, "--shards", shards[split], "--json",
                                      capture=True).strip().splitlines()[-1])
               for split in ("train", "val")}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
    curves = out / "curves.png"
    step(py, "tools/plot_log.py", train / "log.jsonl", "--out", curves)
    picture = out / "demo.jpg"
    step(py, "demo.py", "--weights", weights, "--input", DEMO_IMAGE, "--output", picture, "--json")

    print("\nquickstart done:")
    print(f"  shards      {shards['train']}  {shards['val']}")
    print(f"  checkpoint  {weights}  (training log: {train / 'log.jsonl'})")
    print(f"  metrics     {out / 'metrics.json'}  (keypoint AP {metrics['train']['AP']:.3f} on the "
          f"{metrics['train']['images']} images it trained on, {metrics['val']['AP']:.3f} on the "
          f"{metrics['val']['images']} val images)")
    print(f"  curves      {curves}")
    print(f"  picture     {picture}  (people as json: {picture.with_suffix('.json')})")
    print("The AP on the images it trained on shows that the model learns and that eval.py finds what\n"
          "training taught it; the val AP shows that a small model memorizing 28 images generalizes to\n"
          "nothing, and it draws poor skeletons. For the real model train configs/imhn512.yaml on COCO\n"
          "train2017 on GPUs (README, 'Full COCO').")
    return 0


def step(*cmd, capture=False):
    cmd = [str(c) for c in cmd]
    shown = ["python" if c == sys.executable else c for c in cmd]
    print("\n$ " + shlex.join(shown), flush=True)
    # the quickstart is the CPU recipe: hide any GPU, so that torchrun's 2 processes do not both
    # ask for one (a 1-GPU machine has no GPU 1)
    proc = subprocess.run(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE if capture else None,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if proc.returncode != 0:
        raise UserError(f"step failed (exit {proc.returncode}): {shlex.join(shown)}")
    if capture:
        print(proc.stdout, end="")
    return proc.stdout


if __name__ == "__main__":
    run_cli(main)
