#!/usr/bin/env python
"""A training run in one picture: the curves of a train_ddp.py log.jsonl as a PNG.

    python tools/plot_log.py runs/imhn512/log.jsonl --out curves.png

Six panels against the optimizer step: the loss (total, and each output scale's share, log
scale), the learning rate, images/s (all ranks), the data wait (percent of the time blocked on
the next batch), the gradient norm, and the validation numbers (AP, AP50, AR; the best AP marked).
A resumed run appends to the same log: its lines are drawn as they come. Missing or unreadable
logs are one line, exit 2.
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import io  # noqa: E402
import json  # noqa: E402

from core.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from core.files import write_bytes_atomic  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", type=Path, help="OUT/log.jsonl of a train_ddp.py run")
    p.add_argument("--out", type=Path, help="PNG to write (default: curves.png beside the log)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = args.log.with_name("curves.png")
    return args


def read_log(path: Path) -> list:
    """The records of a log.jsonl; a torn last line (a killed run) is left out."""
    if not path.is_file():
        raise UserError(f"{path}: no such log file")
    lines = path.read_text().splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if n < len(lines):
                raise UserError(f"{path}: line {n} is not json; is this a train_ddp.py log.jsonl?") from None
    if not any(r.get("kind") == "train" for r in records if isinstance(r, dict)):
        raise UserError(f"{path}: no training lines (kind 'train') to draw")
    return records


def series(records: list, kind: str, key: str):
    """(steps, values) of `key` in the records of `kind` that have it."""
    rows = [(r["step"], r[key]) for r in records if r.get("kind") == kind and r.get(key) is not None]
    return [s for s, _ in rows], [v for _, v in rows]


def plot(records: list, title: str):
    """The figure (matplotlib, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    fig.suptitle(title)
    ax = axes[0, 0]
    scales = sorted({k for r in records if r.get("kind") == "train" for k in r if k.startswith("loss_scale")},
                    key=lambda k: int(k[len("loss_scale"):]))
    ax.plot(*series(records, "train", "loss"), color="black", lw=2, label="total")
    for k in scales:
        ax.plot(*series(records, "train", k), lw=1, label=f"scale {k[len('loss_scale'):]}")
    ax.set_yscale("log")
    ax.set_title("loss (scale 0: the finest maps)")
    ax.legend(fontsize=8)
    panels = [(axes[0, 1], "lr", "learning rate", 1), (axes[0, 2], "images_per_s", "images/s (all ranks)", 1),
              (axes[1, 0], "data_wait", "data wait (% of step time)", 100),
              (axes[1, 1], "grad_norm", "gradient norm (before clipping)", 1)]
    for ax, key, name, factor in panels:
        steps, values = series(records, "train", key)
        ax.plot(steps, [factor * v for v in values])
        ax.set_title(name)
    ax = axes[1, 2]
    for key in ("AP", "AP50", "AR"):
        ax.plot(*series(records, "val", key), marker="o", ms=3, label=key)
    steps, ap = series(records, "val", "AP")
    if ap:
        best = max(range(len(ap)), key=ap.__getitem__)
        late = steps[best] > (steps[0] + steps[-1]) / 2  # label on the side with room
        ax.annotate(f"best AP {ap[best]:.3f}", (steps[best], ap[best]), textcoords="offset points",
                    xytext=(-10 if late else 10, 10), ha="right" if late else "left",
                    arrowprops={"arrowstyle": "->"})
        ax.legend(fontsize=8)
        ax.set_ylim(0, 1)
    else:
        ax.text(0.5, 0.5, "no validation\n(train_ddp.py --val-shards DIR)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_title("validation (COCO keypoints)")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return fig


def main(argv=None):
    args = parse_args(argv)
    records = read_log(args.log)
    start = next((r for r in records if r.get("kind") == "start"), {})
    title = (f"{args.log}  ({start.get('world_size', '?')} process(es), {start.get('device', '?')}, "
             f"{start.get('amp', '?')}, global batch {start.get('global_batch', '?')})")
    fig = plot(records, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out, buffer.getvalue())
    print(f"{args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
