"""tools/gt_upper_bound.py: ideal maps -> grouping -> COCOeval, as a user runs it."""
import json

import pytest

from conftest import run_tool
from evaluation.coco import evaluate_keypoints, load_coco

ANNOTATIONS = "data/sample/annotations/person_keypoints_val2017.json"


def test_upper_bound_reports_ap_and_grouping_time(tmp_path):
    out = tmp_path / "results.json"
    proc = run_tool("tools/gt_upper_bound.py", "--annotations", ANNOTATIONS, "--limit", 12,
                    "--out", out, "--json")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["images"] == 12 and summary["people"] > 0
    for key in ("AP", "AP50", "AP75", "APM", "APL", "AR", "grouping_ms_median", "grouping_ms_mean"):
        assert key in summary
    assert summary["AP"] >= 0.95 and summary["grouping_ms_median"] > 0
    # the written results are what was scored: pycocotools gives the same AP from the file
    gt = load_coco(ANNOTATIONS)
    ids = sorted(gt.getImgIds())[:12]
    assert evaluate_keypoints(gt, json.loads(out.read_text()), ids)["AP"] == pytest.approx(summary["AP"], abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--annotations", "no/such.json"], "no such annotations file"),
    (["--annotations", ANNOTATIONS, "--limit", "0"], "--limit"),
    (["--annotations", "{tmp}/bad.json"], "not valid json"),
    ([], "--annotations"),
])
def test_bad_arguments_get_one_line_and_exit_2(args, message, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    args = [a.format(tmp=tmp_path) for a in args]
    proc = run_tool("tools/gt_upper_bound.py", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
