"""tools/export_onnx.py: the tiny model's inference graph in ONNX agrees with PyTorch on real images."""
import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import run_tool
from core.config import from_dict, load_yaml, to_dict
from model.checkpoint import load_model, save_checkpoint
from model.config import ModelConfig
from model.imhn import build_model
from pipelines.config import PipelineConfig

SIZE = 128


def real_images(sample_dir, split, n=2, size=SIZE):
    """[n, 3, size, size] float32: the split's first n images, resized and normalized like the tool's check."""
    paths = sorted((sample_dir / f"{split}2017").glob("*.jpg"))[:n]
    rgb = [cv2.resize(cv2.imread(str(p)), (size, size), interpolation=cv2.INTER_AREA)[..., ::-1] for p in paths]
    norm = PipelineConfig()
    x = (np.stack(rgb) - norm.mean) / norm.std
    return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, sample_dir, skeleton):
    """A tiny-config checkpoint whose maps are O(1) and whose BN statistics come from real images."""
    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, load_yaml("configs/model/tiny.yaml"), "tiny.yaml")
    model = build_model(cfg, skeleton.num_channels)
    for head in model.outs:  # fresh heads give maps near 0, which would hide any difference
        for conv in head:
            torch.nn.init.normal_(conv.weight, std=0.05)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = the average over the batches below
    with torch.no_grad():
        model(real_images(sample_dir, "train", n=8))
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "model_config": to_dict(cfg),
                     "skeleton": skeleton.to_dict(), "input_size": SIZE}, path)
    return path


def test_export_matches_pytorch_on_real_images(tmp_path, tiny_weights, sample_dir, skeleton):
    out = tmp_path / "onnx" / "tiny.onnx"
    proc = run_tool("tools/export_onnx.py", "--weights", tiny_weights, "--out", out, "--json")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["tiny.onnx"]
    assert report["output_shape"] == [1, skeleton.num_channels, SIZE // 4, SIZE // 4]
    assert 0.1 < report["max_abs_output"] < 1e3 and report["max_abs_diff"] < 1e-3 * report["max_abs_output"]

    # independently: other real images (train split), the file as written, the checkpoint via load_model
    model, _, _ = load_model(tiny_weights)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for image in real_images(sample_dir, "train", n=2):
        x = image[None]
        with torch.no_grad():
            expected = model.predict(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-3 * max(1.0, np.abs(expected).max()), rtol=0)


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_weights):
    torn = tmp_path / "torn.pt"
    torn.write_bytes(tiny_weights.read_bytes()[:1000])
    out = tmp_path / "out" / "x.onnx"
    cases = [(["--weights", torn], "not a readable checkpoint"),
             (["--weights", tiny_weights, "--input-size", "100"], "multiple of 64"),
             (["--weights", tiny_weights, "--image", tmp_path / "none.jpg"], "no such image"),
             # a tolerance nothing meets: exported and checked, then refused
             (["--weights", tiny_weights, "--tolerance", "1e-12"], "not written")]
    for args, message in cases:
        proc = run_tool("tools/export_onnx.py", *args, "--out", out, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
        assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))
