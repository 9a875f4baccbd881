"""eval.py and evaluation/: results format, the inference frame chain, sources, the CLI.

The chain (resize, pad, batch, flip test, multi-scale averaging, grouping, back to original
pixels, COCOeval) is checked with an oracle in place of the network: it renders the ideal maps
of exactly the input it is shown, so any geometric slip anywhere in the chain costs AP. The CLI
runs end to end with a tiny random network (it must run, not score).
"""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import run_tool
from evaluation.coco import STAT_NAMES, evaluate_keypoints, gt_results, load_coco, people_to_results
from evaluation.ideal import coco_keypoints
from evaluation.inference import Preprocess
from evaluation.runner import run_model
from evaluation.sources import FolderSource, ShardSource, gt_from_samples
from grouping import GroupingConfig
from pipelines.targets import TargetConfig, render_targets


@pytest.fixture(scope="module")
def val(sample_dir):
    return sample_dir / "val2017", sample_dir / "annotations" / "person_keypoints_val2017.json"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, skeleton):
    """A tiny IMHN (configs/model/tiny.yaml) with seeded random weights, saved as a checkpoint."""
    from core.config import from_dict, load_yaml, to_dict
    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.imhn import IMHN
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, load_yaml("configs/model/tiny.yaml"), "tiny.yaml")
    model = IMHN(cfg, skeleton.num_channels)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "model_config": to_dict(cfg),
                     "skeleton": skeleton.to_dict(), "input_size": 128}, path)
    return path


# -- results format ----------------------------------------------------------------------------

def test_ground_truth_as_results_scores_ap_1(val):
    """pycocotools' own evaluator agrees with our results format: the truth scores AP 1.0."""
    gt = load_coco(val[1])
    stats = evaluate_keypoints(gt, gt_results(gt))
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert evaluate_keypoints(gt, []) == {k: 0.0 for k in STAT_NAMES}  # nobody found: zeros


def test_people_to_results_back_in_original_pixels(skeleton):
    k = np.zeros((skeleton.num_keypoints, 3), np.float32)
    k[0] = (99.75, 49.75, 0.8)           # input pixels at scale 0.5 -> original (200, 100)
    k[skeleton.num_dataset] = (1, 1, 1)  # a derived keypoint: dropped
    (r,) = people_to_results([{"keypoints": k, "score": 0.7}], 5, skeleton, 0.5)
    assert r["image_id"] == 5 and r["category_id"] == 1 and r["score"] == 0.7
    assert len(r["keypoints"]) == 3 * skeleton.num_dataset
    assert r["keypoints"][:3] == [200.0, 100.0, 0.8] and not any(r["keypoints"][3:])


# -- the inference chain ---------------------------------------------------------------------

class Oracle:
    """Stands in for the network: predict(x) renders the ideal maps of the batch x shows.

    It recognizes each input row among the frames eval may feed it (each image of the batch on
    its own, at each scale, mirrored or not) by rebuilding them with the same Preprocess, so a
    row padded to any other frame than its image's own fails; then it renders the ground truth
    in that frame: keypoints scaled like the image, mirrored (left and right swapped) when x is.
    """

    def __init__(self, prep, skeleton, scales, truth):
        self.prep, self.skeleton, self.scales, self.truth = prep, skeleton, scales, truth
        self.batch = []  # (image_id, image) of the batch being run

    def predict(self, x):
        rows = [self.identify(row) for row in x]  # (image_id, (sx, sy), mirrored)
        mirrored = {m for _, _, m in rows}
        assert len(mirrored) == 1, "a batch mixing mirrored and plain inputs"
        return self.render([(i, sc) for i, sc, _ in rows], mirrored.pop(), x.shape, x.device)

    def identify(self, row):
        for image_id, im in self.batch:
            for s in self.scales:
                b = self.prep.batch([im], s)
                ref = self.prep.normalize(b.images, row.device)[0]
                for mirrored in (False, True):
                    if ref.shape == row.shape and torch.equal(row, ref.flip(-1) if mirrored else ref):
                        return image_id, b.scales[0], mirrored
        raise AssertionError("the oracle was shown an input eval should not make")

    def render(self, rows, mirrored, shape, device):
        B, _, H, W = shape
        sk = self.skeleton
        people = max([len(self.truth[i]) for i, _ in rows] + [1])
        kp = np.zeros((B, people, sk.num_keypoints, 3), np.float32)
        for j, (image_id, scale) in enumerate(rows):
            k = self.truth[image_id].copy()
            if not len(k):
                continue
            labelled = k[..., 2:] > 0
            k[..., :2] = np.where(labelled, (k[..., :2] + 0.5) * scale - 0.5, 0)
            k = sk.add_derived(k)
            if mirrored:
                k[..., 0] = np.where(k[..., 2] > 0, W - 1 - k[..., 0], 0)
                k = k[:, list(sk.flip)]
            kp[j, : len(k)] = k
        masks = torch.zeros(B, 2, H // 4, W // 4, device=device)
        return render_targets(torch.from_numpy(kp).to(device), masks, sk, TargetConfig())


class Feed:
    """A source that tells the oracle which images each batch holds."""

    def __init__(self, items, oracle, batch_size):
        self.items, self.oracle, self.batch_size = items, oracle, batch_size

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        for i, item in enumerate(self.items):
            if i % self.batch_size == 0:
                self.oracle.batch = self.items[i: i + self.batch_size]
            yield item


@pytest.mark.parametrize("scales, flip", [((1.0,), False), ((1.0, 0.75), True)])
def test_oracle_maps_through_the_whole_chain_score_like_ideal_maps(val, skeleton, scales, flip):
    """Sample val, 12 images: AP 0.98 single scale (0.981 ideal maps direct), flip and 2 scales."""
    source = FolderSource(*val, limit=12)
    items = list(source)
    gt = source.ground_truth()
    prep = Preprocess(height=512, multiple=64)
    oracle = Oracle(prep, skeleton, scales, {i: coco_keypoints(gt, i) for i, _ in items})
    run = run_model(oracle, Feed(items, oracle, 4), skeleton, prep, GroupingConfig(), scales, flip,
                    "cpu", 4, 4)
    assert run.image_ids == [i for i, _ in items]
    stats = evaluate_keypoints(gt, run.results, run.image_ids)
    assert stats["AP"] >= 0.95, stats


def test_an_images_maps_do_not_depend_on_its_batch(skeleton):
    """A portrait and a landscape image: batched together, each gets the maps it gets alone (a
    real IMHN, whose deep features see the whole padded input, would see the padding otherwise)."""
    from evaluation.inference import predict_maps
    from model.config import ModelConfig
    from model.imhn import build_model
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_stacks=1, depth=2, width=8, increment=4, num_scales=2, se_reduction=2,
                                    stem_width=8, stem_dilations=[2]), skeleton.num_channels).eval()
    rng = np.random.default_rng(0)
    portrait, landscape = (rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((120, 80, 3), (90, 160, 3)))
    prep = Preprocess(height=64, multiple=model.cfg.input_multiple)
    both = predict_maps(model, [portrait, landscape], prep, skeleton, scales=(1.0, 0.75), flip=True)
    for i, image in enumerate((portrait, landscape)):
        alone = predict_maps(model, [image], prep, skeleton, scales=(1.0, 0.75), flip=True)
        h, w = alone.maps.shape[-2:]
        torch.testing.assert_close(both.maps[i, :, :h, :w], alone.maps[0], rtol=0, atol=1e-5)
        assert (both.sizes[i] == alone.sizes[0]).all() and np.allclose(both.scales[i], alone.scales[0])


def test_batches_pad_to_the_network_multiple():
    prep = Preprocess(height=128, multiple=64)
    images = [np.zeros((480, 640, 3), np.uint8), np.zeros((500, 375, 3), np.uint8)]
    b = prep.batch(images)
    assert tuple(b.images.shape) == (2, 3, 128, 192)  # 171 and 96 wide -> 192
    portrait = prep.batch(images[1:])
    assert tuple(portrait.images.shape) == (1, 3, 128, 128)  # 96 wide -> 128: at least square
    assert b.sizes.tolist() == [[128, 171], [128, 96]]
    # one scale for x and y, the frame's (core.frame): height / 128, whatever the rounded width
    np.testing.assert_allclose(b.scales, [[128 / 480, 128 / 480], [128 / 500, 128 / 500]])
    assert (b.images[1, :, :, 96:] == prep.fill).all()


def test_a_model_that_finds_nobody_scores_zero(val, skeleton):
    class Blind:
        def predict(self, x):
            return torch.zeros(x.shape[0], skeleton.num_channels, x.shape[2] // 4, x.shape[3] // 4)

    source = FolderSource(*val, limit=3)
    run = run_model(Blind(), source, skeleton, Preprocess(128, 64), GroupingConfig(), batch_size=2)
    assert len(run.image_ids) == 3 and run.results == []
    assert evaluate_keypoints(source.ground_truth(), run.results, run.image_ids)["AP"] == 0.0


# -- sources ---------------------------------------------------------------------------------

def test_ground_truth_rebuilt_from_shards_matches_the_json(sample_shards, val, tmp_path):
    shards = tmp_path / "val"
    shutil.copytree(sample_shards["val"], shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["source"]["annotations"] = str(tmp_path / "elsewhere.json")  # not on this machine
    (shards / "manifest.json").write_text(json.dumps(manifest))
    source = ShardSource(shards)
    ids = [i for i, _ in source]
    assert source.note and ids
    rebuilt = source.ground_truth()
    truth = load_coco(val[1])
    assert evaluate_keypoints(rebuilt, gt_results(truth, ids), ids)["AP"] == pytest.approx(1.0)
    assert isinstance(gt_from_samples({}), type(rebuilt))


# -- the command line --------------------------------------------------------------------------

def test_eval_runs_end_to_end_on_images(tiny_weights, val, tmp_path):
    out = tmp_path / "results.json"
    proc = run_tool("eval.py", "--weights", tiny_weights, "--images", val[0], "--annotations", val[1],
                    "--limit", 3, "--batch-size", 2, "--device", "cpu", "--flip", "--json", "--out", out)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["missing_images"] == 0 and summary["flip"] is True
    assert set(STAT_NAMES) <= set(summary) and summary["images_per_s"] > 0
    assert "AP50" in proc.stdout and "grouping" in proc.stdout
    results = json.loads(out.read_text())
    assert isinstance(results, list) and len(results) == summary["detections"]


def test_eval_runs_on_shards_and_reports_missing_images(tiny_weights, sample_shards, val, tmp_path):
    proc = run_tool("eval.py", "--weights", tiny_weights, "--shards", sample_shards["val"], "--limit", 2,
                    "--device", "cpu", "--json", "--out", tmp_path / "a.json")
    assert json.loads(proc.stdout.splitlines()[-1])["images"] == 2

    folder = tmp_path / "some"
    folder.mkdir()
    for p in sorted(val[0].glob("*.jpg"))[:2]:
        shutil.copy(p, folder)
    proc = run_tool("eval.py", "--weights", tiny_weights, "--images", folder, "--annotations", val[1],
                    "--device", "cpu", "--json", "--out", tmp_path / "b.json")
    summary = json.loads(proc.stdout.splitlines()[-1])
    listed = len(load_coco(val[1]).getImgIds())
    assert summary["images"] == 2 and summary["missing_images"] == listed - 2
    assert f"missing: {listed - 2} images" in proc.stdout


@pytest.mark.parametrize("args, message", [
    ([], "either --shards"),
    (["--images", "data/sample/val2017"], "needs --annotations"),
    (["--shards", "x", "--images", "y"], "either --shards"),
    (["--shards", "x", "--scales", "0"], "--scales"),
    (["--shards", "x", "--batch-size", "0"], "--batch-size"),
])
def test_bad_arguments_get_one_line_and_exit_2(args, message, tmp_path):
    proc = run_tool("eval.py", "--weights", tmp_path / "w.pt", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_weights_or_folder_exit_2_and_write_nothing(tiny_weights, val, tmp_path):
    out = tmp_path / "r.json"
    for args in (["--weights", tmp_path / "none.pt", "--images", val[0], "--annotations", val[1]],
                 ["--weights", tiny_weights, "--images", tmp_path / "nowhere", "--annotations", val[1]],
                 ["--weights", tiny_weights, "--shards", tmp_path]):
        proc = run_tool("eval.py", *args, "--out", out, "--device", "cpu", check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.json*"))


@pytest.mark.gpu
def test_eval_runs_on_cuda_with_flip_and_scales(tiny_weights, val, tmp_path):
    proc = run_tool("eval.py", "--weights", tiny_weights, "--images", val[0], "--annotations", val[1],
                    "--limit", 6, "--batch-size", 3, "--device", "cuda", "--flip", "--scales", 1, 1.5,
                    "--json", "--out", tmp_path / "r.json")
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["device"] == "cuda" and summary["images"] == 6


@pytest.mark.gpu
def test_oracle_chain_on_cuda_matches_cpu(val, skeleton):
    source = FolderSource(*val, limit=4)
    items = list(source)
    gt = source.ground_truth()
    prep = Preprocess(height=512, multiple=64)
    runs = []
    for device in ("cpu", "cuda"):
        oracle = Oracle(prep, skeleton, (1.0, 0.75), {i: coco_keypoints(gt, i) for i, _ in items})
        runs.append(run_model(oracle, Feed(items, oracle, 2), skeleton, prep, GroupingConfig(),
                              (1.0, 0.75), True, device, 2, 4))
    a, b = (evaluate_keypoints(gt, r.results, r.image_ids)["AP"] for r in runs)
    assert abs(a - b) < 1e-3
