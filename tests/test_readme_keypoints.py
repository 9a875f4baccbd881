"""The README's "Your own keypoints" page, run as written: its yaml, then its command lines in
order, with 2 training steps instead of 300 and a temporary folder for runs/upper. Each
`python SCRIPT ARGS` runs SCRIPT's main() with those arguments in this process (tests/commands.py),
make_shards (whose worker pool forks) as a subprocess."""
import json
import shlex

import cv2
import torch

from conftest import run_tool
from tests.commands import run_main
from tests.readme import blocks, commands, section
from tests.runs import ENV

PAGE = "Your own keypoints"
FOLDER = "runs/upper"


def test_your_own_keypoints_page_works_as_written(tmp_path):
    page = section(PAGE)
    (yaml_text,), (bash,) = blocks(page, "yaml"), blocks(page, "bash")
    assert f"`{FOLDER}/upper_body.yaml`" in page  # where the page says to write the yaml
    (tmp_path / "upper_body.yaml").write_text(yaml_text)
    lines = commands(bash)
    assert [shlex.split(line)[1] for line in lines] == [
        "tools/convert_keypoints.py", "tools/gt_upper_bound.py", "tools/make_shards.py", "train_ddp.py",
        "eval.py", "demo.py"]
    out = {}
    for line in lines:
        assert line.startswith("python ") and FOLDER in line, line
        if "--max-steps 300" in line:
            line = line.replace("--max-steps 300", "--max-steps 2")
        args = shlex.split(line.replace(FOLDER, str(tmp_path)))
        if args[1] == "tools/make_shards.py":
            out[args[1]] = run_tool(*args[1:], env=ENV).stdout
        else:
            status, out[args[1]], err = run_main(*args[1:])
            assert status == 0, f"{line}\n{err}"

    header, values = out["tools/gt_upper_bound.py"].splitlines()[:2]
    assert dict(zip(header.split(), map(float, values.split())))["AP"] >= 0.95
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["skeleton"] == {"name": "upper_body", "num_keypoints": 13}
    ckpt = torch.load(tmp_path / "train" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["skeleton"]["name"] == "upper_body"
    samples = sum(entry["samples"] for entry in manifest["shards"])
    assert out["eval.py"].split()[0] == "AP" and f"\n{samples} images (0 missing)" in out["eval.py"]
    assert cv2.imread(str(tmp_path / "demo.jpg")) is not None
