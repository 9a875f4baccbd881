"""The skeleton: keypoint names, derived keypoints, flip pairs, limbs and OKS sigmas.

Read from one yaml file (configs/skeletons/*.yaml) into one frozen object that every stage
reads: shards, pipelines, targets, model heads, grouping, eval and drawing. Nothing else in
the project hard-codes 17, 18 or 30. Keypoints are indexed 0..K'-1: the K dataset keypoints in
the dataset's own order first, then the derived ones (COCO: neck = midpoint of the shoulders).

Channel order of target maps and network outputs is defined here, once (`channel_slices`):
    limbs [L] | keypoints [K'] | person mask [1] | maximum of the keypoint heatmaps [1]
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import load_yaml
from core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SKELETONS = ROOT / "configs" / "skeletons"  # the shipped ones: coco, crowdpose, aic
COCO_SKELETON = SKELETONS / "coco.yaml"

_KEYS = {"name", "keypoints", "derived", "flip_pairs", "limbs", "sigmas"}
NUM_EXTRA_CHANNELS = 2  # person mask, maximum over the keypoint heatmaps


@dataclass(frozen=True)
class Skeleton:
    name: str
    keypoints: tuple          # all K' names: dataset keypoints, then derived ones
    num_dataset: int          # K: keypoints stored in the data (COCO: 17)
    derived: tuple            # ((index, a, b), ...): keypoint `index` is the midpoint of a and b
    flip: tuple               # [K'] permutation: keypoint i becomes flip[i] under a horizontal flip
    limbs: tuple              # ((a, b), ...) keypoint indices, L of them
    limb_flip: tuple          # [L] permutation of limbs under a horizontal flip
    sigmas: tuple             # [K] OKS sigmas of the dataset keypoints

    # -- sizes and channel layout -------------------------------------------------------
    @property
    def num_keypoints(self) -> int:
        """K': dataset plus derived keypoints."""
        return len(self.keypoints)

    @property
    def num_limbs(self) -> int:
        return len(self.limbs)

    @property
    def num_channels(self) -> int:
        """C = limbs + keypoints + extra channels (person mask, keypoint maximum)."""
        return self.num_limbs + self.num_keypoints + NUM_EXTRA_CHANNELS

    def channel_slices(self) -> dict:
        """Where each group sits along the channel axis of targets and network outputs."""
        L, K = self.num_limbs, self.num_keypoints
        return {"limbs": slice(0, L), "keypoints": slice(L, L + K),
                "person_mask": L + K, "keypoint_max": L + K + 1}

    def channel_names(self) -> tuple:
        """[C] names of the channels, in channel_slices order, for messages and plots."""
        names = self.keypoints
        return (tuple(f"limb {names[a]}-{names[b]}" for a, b in self.limbs)
                + tuple(f"keypoint {n}" for n in names) + ("person mask", "keypoint max"))

    def channel_flip(self) -> tuple:
        """[C] permutation of channels under a horizontal flip (limbs, keypoints; extras stay)."""
        L, K = self.num_limbs, self.num_keypoints
        extras = range(L + K, L + K + NUM_EXTRA_CHANNELS)
        return tuple(self.limb_flip) + tuple(L + f for f in self.flip) + tuple(extras)

    def index(self, name: str) -> int:
        return self.keypoints.index(name)

    def describe(self) -> str:
        """'coco' (17 keypoints): the name and the dataset keypoints, for messages."""
        return f"'{self.name}' ({self.num_dataset} keypoints)"

    def check_keypoint_names(self, names, where: str):
        """A UserError unless `names` are this skeleton's dataset keypoints, in its order.

        names: the keypoint names data was labelled with (a json's categories[0].keypoints, a
        shards manifest's keypoint_names). where: what holds them, for the message (a file name).
        """
        names = [str(n) for n in names]
        own = list(self.keypoints[: self.num_dataset])
        if len(names) != len(own):
            raise UserError(f"{where}: holds {len(names)} keypoints per person, the skeleton "
                            f"{self.describe()} has {len(own)}; name the data's skeleton yaml with --skeleton")
        for i, (theirs, ours) in enumerate(zip(names, own)):
            if theirs != ours:
                raise UserError(f"{where}: keypoint {i} is '{theirs}' where the skeleton {self.describe()} "
                                f"has '{ours}'; name the data's skeleton yaml with --skeleton")

    # -- dataset keypoints <-> keypoints with derived ones (an encode/decode pair) --------
    def add_derived(self, kpts):
        """[..., K, 3] (x, y, v) dataset keypoints -> [..., K', 3] with derived ones appended.

        A derived keypoint is the midpoint of its two sources and has v = min of theirs when
        both are labelled (v > 0), else it is (0, 0, 0). Works on numpy arrays and torch tensors.
        """
        is_torch = type(kpts).__module__.startswith("torch")
        parts = [kpts]
        for _, a, b in self.derived:
            pa, pb = kpts[..., a, :], kpts[..., b, :]
            both = (pa[..., 2] > 0) & (pb[..., 2] > 0)
            xy = (pa[..., :2] + pb[..., :2]) / 2
            if is_torch:
                import torch
                v = torch.minimum(pa[..., 2], pb[..., 2])
                d = torch.cat([xy, v[..., None]], dim=-1) * both[..., None]
            else:
                v = np.minimum(pa[..., 2], pb[..., 2])
                d = np.concatenate([xy, v[..., None]], axis=-1) * both[..., None]
            parts.append(d[..., None, :])
        if len(parts) == 1:
            return kpts
        if is_torch:
            import torch
            return torch.cat(parts, dim=-2)
        return np.concatenate(parts, axis=-2).astype(kpts.dtype, copy=False)

    def drop_derived(self, kpts):
        """[..., K', 3] -> [..., K, 3]: the dataset's own keypoints, in its order."""
        return kpts[..., : self.num_dataset, :]

    def to_dict(self) -> dict:
        """The yaml mapping this skeleton was read from (saved in checkpoints)."""
        names = self.keypoints
        return {
            "name": self.name,
            "keypoints": list(names[: self.num_dataset]),
            "derived": {names[i]: [names[a], names[b]] for i, a, b in self.derived},
            "flip_pairs": [[names[i], names[j]] for i, j in enumerate(self.flip) if i < j],
            "limbs": [[names[a], names[b]] for a, b in self.limbs],
            "sigmas": list(self.sigmas),
        }


def load_skeleton(path=COCO_SKELETON) -> Skeleton:
    """Read and validate a skeleton yaml; any inconsistency is a UserError naming the file."""
    return skeleton_from_dict(load_yaml(path), str(path))


def skeleton_from_dict(data: dict, where: str = "skeleton") -> Skeleton:
    def fail(msg):
        raise UserError(f"{where}: {msg}")

    unknown = sorted(set(data) - _KEYS)
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    for key in ("name", "keypoints", "limbs", "sigmas"):
        if key not in data:
            fail(f"missing key '{key}'")

    dataset = [str(k) for k in data["keypoints"]]
    derived_spec = data.get("derived") or {}
    if not isinstance(derived_spec, dict):
        fail("'derived' must map a name to its two source keypoints")
    names = dataset + [str(k) for k in derived_spec]
    if len(set(names)) != len(names):
        fail("keypoint names repeat")

    def idx(name, what):
        if isinstance(name, int) and not isinstance(name, bool):
            if not 0 <= name < len(names):
                fail(f"{what}: index {name} out of range 0..{len(names) - 1}")
            return name
        if name not in names:
            fail(f"{what}: unknown keypoint '{name}'")
        return names.index(name)

    def pair(p, what):
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            fail(f"{what}: expected a pair of keypoints, got {p!r}")
        a, b = idx(p[0], what), idx(p[1], what)
        if a == b:
            fail(f"{what}: both ends are '{names[a]}'")
        return a, b

    derived = []
    for name, src in derived_spec.items():
        a, b = pair(src, f"derived.{name}")
        if a >= len(dataset) or b >= len(dataset):
            fail(f"derived.{name}: sources must be dataset keypoints")
        derived.append((names.index(str(name)), a, b))

    flip = list(range(len(names)))
    for p in data.get("flip_pairs") or []:
        a, b = pair(p, "flip_pairs")
        if flip[a] != a or flip[b] != b:
            fail(f"flip_pairs: '{names[a]}' or '{names[b]}' appears in more than one pair")
        flip[a], flip[b] = b, a
    for i, a, b in derived:  # a derived keypoint flips with its sources
        fa, fb = flip[a], flip[b]
        if {fa, fb} != {a, b} and flip[i] == i:
            fail(f"derived '{names[i]}': its sources flip to other keypoints; pair it in flip_pairs")

    limbs = [pair(p, f"limbs[{n}]") for n, p in enumerate(data["limbs"])]
    if len(set(limbs)) != len(limbs):
        fail("a limb is listed twice")
    lookup = {frozenset(l): n for n, l in enumerate(limbs)}
    limb_flip = []
    for n, (a, b) in enumerate(limbs):
        m = lookup.get(frozenset((flip[a], flip[b])))
        if m is None:
            fail(f"limbs[{n}] {names[a]}->{names[b]}: its mirror image "
                 f"{names[flip[a]]}->{names[flip[b]]} is not a limb (flip pairs are asymmetric)")
        limb_flip.append(m)

    sigmas = data["sigmas"]
    if not isinstance(sigmas, (list, tuple)) or len(sigmas) != len(dataset):
        fail(f"sigmas: expected {len(dataset)} numbers, one per dataset keypoint")
    if any(not isinstance(s, (int, float)) or s <= 0 for s in sigmas):
        fail("sigmas: every sigma must be a positive number")

    return Skeleton(name=str(data["name"]), keypoints=tuple(names), num_dataset=len(dataset),
                    derived=tuple(derived), flip=tuple(flip), limbs=tuple(limbs),
                    limb_flip=tuple(limb_flip), sigmas=tuple(float(s) for s in sigmas))
