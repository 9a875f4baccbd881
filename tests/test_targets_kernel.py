"""The CUDA target kernel without a GPU: its source compiled by NVRTC for sm_80 and sm_90 for every
shipped skeleton, and the same source built for the CPU (pipelines/targets_host.py) agreeing with
the torch reference to 1e-5 on real sample batches and on edge cases, channel group by group."""
import pytest
import torch

from core.skeleton import load_skeleton, skeleton_from_dict
from pipelines.config import AugmentConfig, PipelineConfig
from pipelines.loader import make_loader
from pipelines.targets import TargetConfig, render_targets_reference
from pipelines.targets_cuda import KERNEL, NVRTC_OPTIONS, kernel_source
from pipelines.targets_host import host_compiler, render_targets_host
from tests.conftest import ROOT

CFG = TargetConfig()
TOLERANCE = 1e-5
SKELETON_FILES = sorted((ROOT / "configs" / "skeletons").glob("*.yaml"))
# no limbs at all: the kernel's limb table is then the placeholder {0} and no thread reads it
POINTS = skeleton_from_dict({"name": "points", "keypoints": ["left", "right"], "flip_pairs": [["left", "right"]],
                             "limbs": [], "sigmas": [0.05, 0.05]}, "points")
needs_cxx = pytest.mark.skipif(host_compiler() is None,
                               reason="no C++ compiler ($CXX, c++, g++ or clang++) to build the kernel for the CPU")


def _nvrtc(source: str, arch: str) -> bytes:
    """CUBIN (arch sm_XX) or PTX (compute_XX) of `source`, built as CuPy builds it, with no GPU."""
    from cupy_backends.cuda.libs import nvrtc
    program = nvrtc.createProgram(source, f"{KERNEL}.cu", [], [])
    try:
        nvrtc.compileProgram(program, [*NVRTC_OPTIONS, f"-arch={arch}"])
        return nvrtc.getCUBIN(program) if arch.startswith("sm_") else nvrtc.getPTX(program)
    except nvrtc.NVRTCError as e:
        raise AssertionError(f"NVRTC: {e}\n{nvrtc.getProgramLog(program)}") from None
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("skeleton_file", [*SKELETON_FILES, None], ids=lambda p: p.stem if p else "no-limbs")
def test_kernel_compiles_with_nvrtc_for_every_skeleton(skeleton_file, arch):
    skeleton = load_skeleton(skeleton_file) if skeleton_file else POINTS
    assert len(_nvrtc(kernel_source(skeleton.limbs), arch)) > 1000


def test_nvrtc_exports_the_kernel_by_name_and_rejects_a_broken_source(skeleton):
    ptx = _nvrtc(kernel_source(skeleton.limbs), "compute_90").decode()
    assert f".entry {KERNEL}(" in ptx  # extern "C": the name CuPy looks up is not mangled
    with pytest.raises(AssertionError, match="NVRTC"):
        _nvrtc(kernel_source(skeleton.limbs).replace("fmaxf(best", "fmaxf(bset"), "sm_90")


def _assert_same(kernel, reference, skeleton, empty=()):
    """kernel == reference within TOLERANCE in every channel group; the groups not named in
    `empty` must hold something (else the comparison would prove nothing)."""
    assert kernel.shape == reference.shape and kernel.dtype == torch.float32
    for group, channels in skeleton.channel_slices().items():
        a, b = kernel[:, channels], reference[:, channels]
        if a.numel():  # a skeleton without limbs has an empty limb group
            assert (a - b).abs().max().item() <= TOLERANCE, group
        assert (a.numel() > 0 and b.abs().max().item() > 0.5) != (group in empty), group


@needs_cxx
@pytest.mark.parametrize("name, cfg", [
    ("augmented", PipelineConfig(input_size=256, batch_size=8, num_threads=2)),
    ("all flipped", PipelineConfig(input_size=256, batch_size=8, num_threads=2, augment=AugmentConfig(flip_prob=1.0))),
    ("max_people exceeded", PipelineConfig(input_size=256, batch_size=8, num_threads=2, max_people=2)),
])
def test_kernel_on_the_cpu_matches_the_reference_on_sample_batches(sample_shards, skeleton, name, cfg):
    with make_loader(sample_shards["train"], cfg, skeleton) as loader:
        batches = [next(iter(loader)) for _ in range(2)]
        stats = loader.stats()
    if name == "max_people exceeded":
        assert stats["over_max_people"] > 0
    for batch in batches:
        host = render_targets_host(batch["keypoints"], batch["masks"], skeleton, cfg.targets)
        _assert_same(host, render_targets_reference(batch["keypoints"], batch["masks"], skeleton, cfg.targets),
                     skeleton)
        assert torch.equal(host, batch["targets"]) or (host - batch["targets"]).abs().max() <= TOLERANCE


def _people(gen, B, P, skeleton, size, spread=1.0):
    """[B, P, K', 3] people of plausible build around random centres; a quarter unlabelled."""
    centre = torch.rand(B, P, 1, 2, generator=gen) * (size + 80) - 40
    xy = centre + torch.randn(B, P, skeleton.num_keypoints, 2, generator=gen) * size / 8 * spread
    v = (torch.rand(B, P, skeleton.num_keypoints, 1, generator=gen) > 0.25).float() * 2
    return torch.cat([xy, v], dim=-1)


def _masks(gen, B, H, W):
    return (torch.rand(B, 2, H, W, generator=gen) > 0.3).float()


@needs_cxx
def test_kernel_on_the_cpu_with_no_people(skeleton):
    for P in (0, 3):  # no rows, or padding rows only (v = 0 whatever x and y hold)
        kp = torch.randn(2, P, skeleton.num_keypoints, 3) * 100
        kp[..., 2] = 0
        masks = torch.ones(2, 2, 32, 40)
        host = render_targets_host(kp, masks, skeleton, CFG)
        _assert_same(host, render_targets_reference(kp, masks, skeleton, CFG), skeleton,
                     empty=("limbs", "keypoints", "keypoint_max"))


@needs_cxx
def test_kernel_on_the_cpu_with_people_on_the_border_and_outside_the_map(skeleton):
    gen = torch.Generator().manual_seed(5)
    H, W = 48, 40  # non-square: S = 192 high, 160 wide in input pixels
    spots = torch.tensor([-0.5, 0.0, 1.5, 80.0, 158.5, 159.5, 160.0, -25.0, 185.0, -1e4, 1e4])
    kp = torch.zeros(3, 12, skeleton.num_keypoints, 3)
    # sample 0: every keypoint at a border / outside spot, both axes mixed
    n = skeleton.num_keypoints * 12
    kp[0, ..., 0] = spots[torch.randint(len(spots), (n,), generator=gen)].view(12, -1)
    kp[0, ..., 1] = spots[torch.randint(len(spots), (n,), generator=gen)].view(12, -1) * 1.2
    kp[0, ..., 2] = 2
    # sample 1: wide people centred anywhere around the map, many half outside
    kp[1] = _people(gen, 1, 12, skeleton, 180, spread=2.0)[0]
    # sample 2: limbs crossing the map from far outside, and zero-length limbs on the corner
    kp[2, :6] = _people(gen, 1, 6, skeleton, 2000)[0] - 900
    kp[2, 6:, :, :2] = torch.tensor([159.5, -0.5])
    kp[2, 6:, :, 2] = 1
    masks = _masks(gen, 3, H, W)
    _assert_same(render_targets_host(kp, masks, skeleton, CFG), render_targets_reference(kp, masks, skeleton, CFG),
                 skeleton)


@needs_cxx
def test_kernel_on_the_cpu_with_more_people_than_max_people(skeleton):
    gen = torch.Generator().manual_seed(6)
    kp = _people(gen, 2, PipelineConfig().max_people * 2, skeleton, 256)  # every row is a person
    masks = _masks(gen, 2, 64, 64)
    _assert_same(render_targets_host(kp, masks, skeleton, CFG), render_targets_reference(kp, masks, skeleton, CFG),
                 skeleton)


@needs_cxx
def test_kernel_on_the_cpu_mirrors_a_flipped_sample(skeleton):
    """A mirrored sample (x -> S-1-x, left/right swapped) gives the mirrored maps with the flip's
    channel permutation: the map grid is symmetric about the input's centre."""
    gen = torch.Generator().manual_seed(7)
    S, H = 256, 64
    kp = _people(gen, 2, 5, skeleton, S)
    flipped = kp[:, :, list(skeleton.flip)].clone()
    flipped[..., 0] = S - 1 - flipped[..., 0]
    masks = _masks(gen, 2, H, H)
    host = render_targets_host(kp, masks, skeleton, CFG)
    host_flipped = render_targets_host(flipped, masks.flip(-1), skeleton, CFG)
    _assert_same(host_flipped, render_targets_reference(flipped, masks.flip(-1), skeleton, CFG), skeleton)
    assert (host_flipped - host[:, list(skeleton.channel_flip())].flip(-1)).abs().max() <= TOLERANCE


@needs_cxx
@pytest.mark.parametrize("cfg", [CFG, TargetConfig(stride=8, keypoint_sigma=5.0, limb_sigma=11.0, threshold=0.1,
                                                    person_mask_erode=0)])
def test_kernel_on_the_cpu_for_a_skeleton_without_limbs_and_other_settings(cfg, skeleton):
    gen = torch.Generator().manual_seed(8)
    for sk, empty in ((POINTS, ("limbs",)), (skeleton, ())):
        kp = _people(gen, 2, 4, sk, 256)
        masks = _masks(gen, 2, 256 // cfg.stride, 200 // cfg.stride)
        _assert_same(render_targets_host(kp, masks, sk, cfg), render_targets_reference(kp, masks, sk, cfg), sk, empty)
