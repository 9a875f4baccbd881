"""Assembly: connections -> people, one image at a time (the only sequential step).

1. Connections are taken best first (all limbs together). Each one either starts a person
   (both ends free), adds its free end to the person holding the other end (when that person
   has no candidate of that keypoint type yet), merges two partial people (when no keypoint
   type is filled in both), or adds evidence to a person holding both ends. Both ends of every
   limb are handled alike, so no branch drops a start point (the original's bug).
2. Candidates left over become one-keypoint people: a person with a single labelled keypoint
   has no limb to be found by (the original lost all of them).
3. Fragments are attached to a larger person nearby. A keypoint whose neighbour in the skeleton
   is unlabelled (a wrist without its elbow, an eye without nose and neck) has no limb to its
   person, and the original reported it as a false person while its person lacked it. A
   fragment of at most `fragment_max_keypoints` joins the larger person that has none of its
   keypoint types and is nearest in "limb units": the gap between the two, divided by the
   number of limbs the skeleton needs to bridge it and by the person's mean limb length, must
   be at most `fragment_distance`.
4. People are pruned by keypoint count and mean score and scored 1 - 1/(1 + sum of scores);
   one-keypoint people are scaled down by `single_score_scale` to rank below the rest.
"""
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


@dataclass
class _Partial:
    slots: np.ndarray                 # [K'] candidate index per keypoint type, -1 = none
    filled: int = 0                   # bit k set: slots[k] holds a candidate (checked per
                                      # connection: a Python int is far cheaper than numpy there)
    members: list = field(default_factory=list)
    score: float = 0.0                # sum of its candidates' and connections' scores
    parts: int = 0                    # candidates plus connections summed in `score`
    length: float = 0.0               # sum of its connections' lengths, input pixels
    links: int = 0                    # connections summed in `length`


def assemble(kind: np.ndarray, xy: np.ndarray, peak_score: np.ndarray, start: np.ndarray,
             end: np.ndarray, conn_score: np.ndarray, skeleton, cfg) -> list:
    """Group one image's candidates into people.

    Args:
        kind: [N] keypoint type of each candidate; xy: [N, 2] its position (any pixel frame);
            peak_score: [N] its heatmap value.
        start, end: [M] candidate indices of each connection, best first; conn_score: [M].
        skeleton: core.skeleton.Skeleton (number of keypoint types, limb graph).
        cfg: GroupingConfig.
    Returns:
        list of (slots [K'] candidate index or -1, person score), best first.
    """
    K = skeleton.num_keypoints
    owner = np.full(len(kind), -1, dtype=np.int64)
    people = []
    kinds = kind.tolist()
    scores = peak_score.tolist()

    def add(i, c):
        p = people[i]
        p.slots[kinds[c]] = c
        p.filled |= 1 << kinds[c]
        p.members.append(c)
        p.score += scores[c]
        p.parts += 1
        owner[c] = i

    lengths = np.linalg.norm(xy[end] - xy[start], axis=1).tolist() if len(start) else []
    for s, e, cs, ln in zip(start.tolist(), end.tolist(), conn_score.tolist(), lengths):
        ps, pe = owner[s], owner[e]
        if ps < 0 and pe < 0:
            i = len(people)
            people.append(_Partial(np.full(K, -1, dtype=np.int64)))
            add(i, s)
            add(i, e)
        elif ps < 0 or pe < 0:
            i, free = (pe, s) if ps < 0 else (ps, e)
            if people[i].filled >> kinds[free] & 1:  # this person already has that keypoint
                continue
            add(i, free)
        elif ps != pe:
            if not _merge(people, owner, ps, pe, kinds):  # a keypoint type in both: two people
                continue
            i = ps
        else:
            i = ps
        p = people[i]
        p.score += cs
        p.parts += 1
        p.length += ln
        p.links += 1

    for c in np.flatnonzero(owner < 0).tolist():  # leftovers: one-keypoint people
        i = len(people)
        people.append(_Partial(np.full(K, -1, dtype=np.int64)))
        add(i, c)

    if cfg.fragment_max_keypoints > 0:
        _attach_fragments(people, owner, kinds, xy, skeleton, cfg)

    result = []
    for p in people:
        if p is None or len(p.members) < cfg.min_keypoints or p.score < cfg.min_mean_score * p.parts:
            continue
        score = 1 - 1 / (1 + p.score)
        result.append((p.slots, score * cfg.single_score_scale if len(p.members) == 1 else score))
    result.sort(key=lambda r: -r[1])
    return result


def _merge(people, owner, i, j, kinds) -> bool:
    """Move person j into person i unless some keypoint type is filled in both."""
    p, q = people[i], people[j]
    if p.filled & q.filled:
        return False
    for c in q.members:
        p.slots[kinds[c]] = c
        owner[c] = i
    p.filled |= q.filled
    p.members += q.members
    p.score += q.score
    p.parts += q.parts
    p.length += q.length
    p.links += q.links
    people[j] = None
    return True


def _attach_fragments(people, owner, kinds, xy, skeleton, cfg):
    """Merge small fragments into compatible larger people nearby (step 3 above), best pair first.

    The cost of fragment F joining host H is, over F's candidates f, the smallest
        gap(f, h) / (hops(f, h) * mean limb length of H)
    where h ranges over H's candidates of the types closest to f's in the skeleton (a wrist is
    measured from the shoulder when the elbow is missing, not from a far foot that would make
    any gap look small). A host needs a connection (a limb length) and more candidates than F,
    and the two no keypoint type in common. After each merge only the costs of the grown host
    are recomputed.
    """
    alive = [i for i, p in enumerate(people) if p is not None]
    frags = [i for i in alive if len(people[i].members) <= cfg.fragment_max_keypoints]
    hosts = [i for i in alive if people[i].links > 0]
    if not frags or not hosts:
        return
    # between any two candidates, once: limbs apart (by their types) and gap / limbs
    kinds = np.asarray(kinds)
    hop = limb_hops(skeleton)[kinds[:, None], kinds[None]]  # [N, N]
    gap = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_limb = np.where(np.isfinite(hop) & (hop > 0), gap / hop, np.inf)

    def reach(h) -> list:
        """[N] per candidate: over host h's candidates of the types nearest to its own, the
        smallest gap / limbs (a Python list: read a candidate or two at a time below)."""
        near = hop[:, people[h].members]
        nearest = near == near.min(1, keepdims=True)
        return np.where(nearest, per_limb[:, people[h].members], np.inf).min(1).tolist()

    def cost(f, h) -> float:
        """Fragment f joining host h; inf when they may not merge: a keypoint type in both, a
        host not larger than the fragment, or itself."""
        p, q = people[f], people[h]
        if f == h or p.filled & q.filled or len(p.members) >= len(q.members):
            return np.inf
        unit = max(q.length / q.links, 1e-3)  # the host's mean limb length
        return min(reaches[h][c] for c in p.members) / unit

    reaches = {h: reach(h) for h in hosts}
    costs = np.full((len(people), len(people)), np.inf)  # [fragment, host]
    for f in frags:
        costs[f, hosts] = [cost(f, h) for h in hosts]
    while True:
        f, h = np.unravel_index(np.argmin(costs), costs.shape)
        if not costs[f, h] <= cfg.fragment_distance:
            return
        _merge(people, owner, h, f, kinds)
        costs[f, :] = costs[:, f] = np.inf
        frags = [i for i in frags if people[i] is not None]
        hosts = [i for i in hosts if people[i] is not None]
        reaches[h] = reach(h)  # only the grown host's costs change
        costs[frags, h] = [cost(i, h) for i in frags]
        costs[h, :] = np.inf
        if len(people[h].members) <= cfg.fragment_max_keypoints:
            costs[h, hosts] = [cost(h, i) for i in hosts]


@lru_cache(maxsize=8)
def limb_hops(skeleton) -> np.ndarray:
    """[K', K'] float: fewest limbs joining two keypoint types in the skeleton (inf if none)."""
    K = skeleton.num_keypoints
    d = np.full((K, K), np.inf)
    np.fill_diagonal(d, 0)
    for a, b in skeleton.limbs:
        d[a, b] = d[b, a] = 1
    for m in range(K):  # Floyd-Warshall on a handful of nodes
        d = np.minimum(d, d[:, m:m + 1] + d[m:m + 1, :])
    return d
