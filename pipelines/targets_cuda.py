"""CuPy kernel of pipelines.targets.render_targets for CUDA tensors.

One thread per cell of the limb and keypoint channels: it loops over the sample's people
(padding rows cost two loads) and max-combines the thresholded Gaussians, exactly the
definition in pipelines/targets.py. The keypoints are read straight from the torch tensor
through DLPack (no copy), the kernel runs on torch's current stream and nothing waits for
it on the host. The skeleton's limb table is compiled into the kernel (one build per skeleton).
The person-mask and keypoint-max channels are torch operations on the same stream.

Without a GPU the same source string is checked twice in CI: NVRTC compiles it for sm_80 and
sm_90 (tests/test_targets_kernel.py), and pipelines/targets_host.py builds it for the CPU with
the system C++ compiler, so its results are compared with the torch reference.
"""
import functools

import numpy as np
import torch

from pipelines.targets import fill_extra_channels

_THREADS = 256

_SOURCE = r"""
__constant__ int LIMB_ENDS[%(limb_table_size)d] = {%(limb_table)s};

extern "C" __global__ void render_maps(
    const float* __restrict__ kp,  // [B, P, K, 3] (x, y, v) input pixels
    float* __restrict__ out,       // [B, C, H, W]
    int B, int P, int K, int C, int H, int W,
    float stride, float half,      // cell j's centre is input pixel j * stride + half
    float kp_scale, float kp_r2,   // -1 / (2 sigma_k^2), squared keypoint radius
    float limb_scale, float limb_r2,
    int limb_channel0, int kp_channel0)
{
    const int L = %(num_limbs)d;
    long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)B * (L + K) * H * W;
    if (n >= total) return;
    int j = (int)(n %% W);
    long long r = n / W;
    int i = (int)(r %% H);
    r /= H;
    int c = (int)(r %% (L + K));
    int b = (int)(r / (L + K));
    float qx = j * stride + half;
    float qy = i * stride + half;
    const float* sample = kp + (long long)b * P * K * 3;
    float best = 0.0f;
    int channel;
    if (c < L) {
        int ka = LIMB_ENDS[2 * c], kb = LIMB_ENDS[2 * c + 1];
        for (int p = 0; p < P; ++p) {
            const float* a = sample + (p * K + ka) * 3;
            const float* e = sample + (p * K + kb) * 3;
            if (!(a[2] > 0.0f && e[2] > 0.0f)) continue;
            float ax = a[0], ay = a[1];
            float dx = e[0] - ax, dy = e[1] - ay;
            float len2 = dx * dx + dy * dy;
            float t = ((qx - ax) * dx + (qy - ay) * dy) / (len2 > 0.0f ? len2 : 1.0f);
            t = fminf(fmaxf(t, 0.0f), 1.0f);
            float ex = qx - (ax + t * dx), ey = qy - (ay + t * dy);
            float d2 = ex * ex + ey * ey;
            if (d2 <= limb_r2) best = fmaxf(best, expf(d2 * limb_scale));
        }
        channel = limb_channel0 + c;
    } else {
        int k = c - L;
        for (int p = 0; p < P; ++p) {
            const float* q = sample + (p * K + k) * 3;
            if (!(q[2] > 0.0f)) continue;
            float dx = qx - q[0], dy = qy - q[1];
            float d2 = dx * dx + dy * dy;
            if (d2 <= kp_r2) best = fmaxf(best, expf(d2 * kp_scale));
        }
        channel = kp_channel0 + k;
    }
    out[(((long long)b * C + channel) * H + i) * W + j] = best;
}
"""


KERNEL = "render_maps"             # the kernel's name in the source
NVRTC_OPTIONS = ("--fmad=false",)  # no fused multiply-add: rounds as the CPU reference does


def kernel_source(limbs: tuple) -> str:
    """The CUDA C++ source of the kernel for a skeleton's limbs ((a, b), ...).

    The one string NVRTC compiles on the GPU (here), and that pipelines/targets_host.py compiles
    for the CPU and tests/test_targets_kernel.py compiles with NVRTC on a machine without a GPU.
    """
    table = [k for pair in limbs for k in pair] or [0]  # a C array needs at least one element
    return _SOURCE % {"limb_table_size": len(table), "limb_table": ", ".join(map(str, table)),
                      "num_limbs": len(limbs)}


def render_with(launch, keypoints: torch.Tensor, masks: torch.Tensor, skeleton, cfg) -> torch.Tensor:
    """pipelines.targets.render_targets with the kernel run by `launch` (same arguments, same result).

    `launch(source, grid, block, args)` runs kernel_source(skeleton.limbs) on `grid` blocks of
    `block` threads; args are the kernel's 16 arguments in order: the keypoints [B, P, K', 3]
    and the output [B, C, H, W] (float32 contiguous tensors on the keypoints' device), then
    numpy int32 / float32 scalars. The person-mask and keypoint-max channels are torch
    operations on that device, after the kernel.
    """
    B, P, K, _ = keypoints.shape
    H, W = masks.shape[-2:]
    if K != skeleton.num_keypoints:
        raise ValueError(f"keypoints have {K} per person, the skeleton {skeleton.num_keypoints} "
                         f"(derived ones included)")
    L, C = skeleton.num_limbs, skeleton.num_channels
    sl = skeleton.channel_slices()
    kp = keypoints.detach().to(torch.float32).contiguous()
    out = torch.empty(B, C, H, W, device=kp.device, dtype=torch.float32)
    total = B * (L + K) * H * W
    if total:
        launch(kernel_source(tuple(skeleton.limbs)), (total + _THREADS - 1) // _THREADS, _THREADS,
               [kp, out, np.int32(B), np.int32(P), np.int32(K), np.int32(C), np.int32(H), np.int32(W),
                np.float32(cfg.stride), np.float32((cfg.stride - 1) / 2),
                np.float32(-1 / (2 * cfg.keypoint_sigma ** 2)), np.float32(cfg.keypoint_radius() ** 2),
                np.float32(-1 / (2 * cfg.limb_sigma ** 2)), np.float32(cfg.limb_half_width() ** 2),
                np.int32(sl["limbs"].start), np.int32(sl["keypoints"].start)])
    fill_extra_channels(out, masks, skeleton, cfg)
    if K:
        out[:, sl["keypoint_max"]] = out[:, sl["keypoints"]].amax(dim=1)
    else:
        out[:, sl["keypoint_max"]] = 0
    return out


def render_targets_cuda(keypoints: torch.Tensor, masks: torch.Tensor, skeleton, cfg) -> torch.Tensor:
    """CUDA implementation of pipelines.targets.render_targets (same arguments, same result)."""
    return render_with(_launch_cupy, keypoints, masks, skeleton, cfg)


@functools.lru_cache(maxsize=None)
def _kernel(source: str):
    import cupy
    return cupy.RawKernel(source, KERNEL, options=NVRTC_OPTIONS)  # compiled on first call, cached on disk


def _launch_cupy(source: str, grid: int, block: int, args: list):
    """Run the kernel on torch's current stream of the tensors' device; nothing waits for it."""
    import cupy

    device = args[0].device
    stream = torch.cuda.current_stream(device)
    if not hasattr(stream, "__cuda_stream__"):  # torch before the CUDA stream protocol (2.11)
        stream = _StreamProtocol(stream.cuda_stream)
    with cupy.cuda.Device(device.index), cupy.cuda.Stream.from_external(stream):
        _kernel(source)((grid,), (block,),
                        tuple(cupy.from_dlpack(a) if isinstance(a, torch.Tensor) else a for a in args))


class _StreamProtocol:
    """A raw CUDA stream handle behind the CUDA stream protocol, for cupy.cuda.Stream.from_external."""

    def __init__(self, handle: int):
        self.handle = handle

    def __cuda_stream__(self):
        return (0, self.handle)
