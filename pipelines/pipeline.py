"""The DALI pipeline: shards -> decode -> one random affine per sample, on CPU or GPU.

One definition for both devices (ARCHITECTURE.md): `device` only picks the image decoder
("cpu" or "mixed") and guards the `.gpu()` transfers; every other operator runs where its input
lives. With device="cpu" the pipeline needs no CUDA at all (device_id=None).

Outputs per sample (the loader batches them, pipelines/loader.py):
    images     [3, S, S] normalized (PipelineConfig.mean / std, tinted), float32 or float16
    keypoints  [P, K, 3] (x, y, v) input pixels, the data's K keypoints, left/right NOT yet swapped
               for flipped samples; P padded with v = 0 rows to the largest P of the batch
    masks      [S/stride, S/stride, 1] uint8 bit flags (1 person, 2 ignore), nearest-neighbour
    flips      [] 1.0 where the sample was mirrored
"""
from nvidia.dali import fn, pipeline_def, types

from pipelines import augment

OUTPUTS = ("images", "keypoints", "masks", "flips")


@pipeline_def
def augment_pipeline(paths, index_paths, cfg, num_keypoints: int, device: str, shard_id: int,
                     num_shards: int, train: bool, reader_seed: int):
    """Args: paths / index_paths of the tar shards, cfg: PipelineConfig, num_keypoints: K in the
    data, device: "cpu" or "gpu", shard_id / num_shards: this rank's part, train: augment and
    shuffle (else the inference frame, core/frame.py; keep the order), reader_seed: the shuffle's seed."""
    gpu = device == "gpu"
    S, stride = cfg.input_size, cfg.targets.stride
    jpg, kpts, mask_png = read_shards(paths, index_paths, cfg, shard_id, num_shards, train, reader_seed)
    kp = fn.reshape(kpts, shape=[-1, num_keypoints, 3])  # raw little-endian float32 [P, K, 3]

    centre, scale, angle, flip = augment.sample_affine(
        kp, fn.peek_image_shape(jpg, adjust_orientation=False), cfg.augment, S, num_keypoints, train)
    m_keypoints, m_image, m_mask = augment.affine_matrices(centre, scale, angle, flip, S, stride)

    image = decode_image(jpg, gpu)
    # warp_perspective rather than warp_affine: the same bilinear warp (to a level), 4x faster on
    # CPU in DALI 2.4, and it takes pixel centres at integers (pixel_origin="center") as we do
    image = fn.experimental.warp_perspective(image, matrix=m_image, size=[S, S], inverse_map=False,
                                             fill_value=[cfg.fill] * 3, pixel_origin="center",
                                             interp_type=types.INTERP_LINEAR)
    mean, std = augment.tinted_normalization(cfg.mean, cfg.std, cfg.augment, train)
    image = fn.crop_mirror_normalize(image, mean=mean, std=std, output_layout="CHW",
                                     dtype=types.FLOAT16 if cfg.image_dtype == "float16" else types.FLOAT)

    mask = decode_mask(mask_png)
    if gpu:
        mask = mask.gpu()
    # nearest keeps the bit flags; outside the image: 0 = background that counts (as the original)
    mask = fn.experimental.warp_perspective(mask, matrix=m_mask, size=[S // stride, S // stride],
                                            inverse_map=False, fill_value=[0], pixel_origin="center",
                                            interp_type=types.INTERP_NN)

    keypoints = fn.pad(augment.transform_keypoints(kp, m_keypoints, num_keypoints), axes=[0], fill_value=0)
    if gpu:
        keypoints, flip = keypoints.gpu(), flip.gpu()
    return image, keypoints, mask, flip


def read_shards(paths, index_paths, cfg, shard_id: int, num_shards: int, train: bool, reader_seed: int):
    """DALI's webdataset reader over the shards: (jpg, kpts, mask.png) bytes of each sample.

    This rank's part (shard_id of num_shards) first; at the end of it the reader goes on to the
    next rank's part (stick_to_shard=False), so that one endless pipeline reads all the data over
    the epochs (pipelines/loader.py). train: shuffle in a buffer of cfg.shuffle_buffer samples.
    """
    return fn.readers.webdataset(
        paths=paths, index_paths=index_paths, ext=["jpg", "kpts", "mask.png"],
        dtypes=[types.UINT8, types.FLOAT, types.UINT8], missing_component_behavior="error",
        shard_id=shard_id, num_shards=num_shards, stick_to_shard=False, random_shuffle=train,
        initial_fill=cfg.shuffle_buffer, seed=reader_seed, name="reader",
        # plain reads, not mmap: a shard truncated under a mapping kills the process with SIGBUS,
        # where a read fails with an error the loader traces to the shard (pipelines/loader.py);
        # DALI also advises it for network filesystems, where shards of a cluster live
        dont_use_mmap=True)


def decode_image(jpg, gpu: bool):
    """[H, W, 3] RGB uint8 of the original image (on the GPU with the mixed decoder)."""
    # COCO's keypoints refer to the stored pixel grid: ignore EXIF orientation when decoding;
    # fancy upsampling: the mixed decoder's chroma as libjpeg-turbo's on the CPU (no-op there)
    return fn.decoders.image(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB,
                             adjust_orientation=False, jpeg_fancy_upsampling=True)


def decode_mask(mask_png):
    """[H, W, 1] uint8 bit flags of the sample's mask (PERSON 1, IGNORE 2), on the CPU."""
    # GRAY: the stored single channel as it is, by a faster path than ANY_DATA (same values)
    return fn.decoders.image(mask_png, device="cpu", output_type=types.GRAY, adjust_orientation=False)
