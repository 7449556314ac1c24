"""Registry settings: where the data lives, which pipeline profile it uses, and the decision parameters.

Settings are stored as `settings.json` in the data directory when the registry is created, so a registry
always reopens with the profile and thresholds it was built with. Environment variables and command-line
options can point the catalog and the vector index elsewhere (a PostgreSQL URL, a Qdrant server).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SETTINGS_FILE = "settings.json"
PROFILES = ("paper", "offline", "tiny-test")


# What a registry made before these settings existed ran with: absent keys mean these values, so its feature
# cache, calibrations and decisions stay valid.
LEGACY_LOCAL = {"upscale": False, "first_pass_keypoints": 0, "full_rerank_individuals": 0, "lnbnn_individuals": 0,
                "verify": False, "lnbnn_photos": 1, "combine_photos": 1, "engine": "lightglue",
                "distinctive": False, "box_only": False, "static_scenery": False}
LOCAL_ENGINES = ("mnn", "lightglue")
SECOND_MATCHERS = ("", "disk")  # "": none


@dataclass
class LocalMatcherSettings:
    # The keypoint budget is the biggest lever measured on real animals (benchmarks/local_matching.py: nyala
    # top-1 13 % at 256 keypoints, 57 % at 1024); its cost is paid only for the best few candidates.
    max_keypoints: int = 1024
    long_side: int = 512
    # How a pair's correspondences are found: "lightglue" (the learned matcher, ~365 ms per pair at 1024
    # keypoints on a 2-core CPU) or "mnn" (mutual nearest descriptors that pass Lowe's ratio test, one matrix
    # multiply per pair from the cached 8-bit descriptors, ~2 ms). Both are verified by MAGSAC. Measured on the
    # same queries (docs/benchmarks.md): mnn 12x faster per query and as accurate on Holstein faces and the
    # synthetic population, but on nyala, photographed in shared scenery, background matches between different
    # animals make its calibration flat and the decisions collapse; so LightGlue stays the default and mnn is
    # chosen per registry (`registry init --engine mnn`, `registry calibrate --engine mnn`).
    engine: str = "lightglue"
    ratio: float = 0.9  # mnn: nearest / second-nearest descriptor distance must stay below this
    min_confidence: float = 0.5  # a LightGlue correspondence counts when its confidence reaches this
    pair_batch: int = 0  # candidate pairs per LightGlue call; 0 = per device (1 on CPU, 32 on GPU; measured)
    upscale: bool = True  # enlarge photos smaller than long_side (Holstein faces are ~100 x 190 px)
    # Two stages: every photo of the global shortlist is matched with its `first_pass_keypoints` strongest
    # keypoints, and only the `full_rerank_individuals` best of them get the whole budget, together with the
    # `lnbnn_individuals` best by LNBNN over every reference descriptor of the species (independent of the global
    # embedding, which is weak on stripes: nyala recall@10 0.56 by LNBNN vs 0.32 by the global shortlist,
    # benchmarks/local_matching.py). 0 = one stage at the full budget / no LNBNN.
    first_pass_keypoints: int = 256
    full_rerank_individuals: int = 4
    lnbnn_individuals: int = 6
    verify: bool = True  # also score pairs by correspondences consistent with one epipolar geometry (MAGSAC)
    # Background that never votes: also score pairs by the verified correspondences that match the candidate's
    # individual better than any other shortlisted individual (`local_matcher.Background`); calibration and the
    # learned fusion weigh it against the plain counts. Measured (benchmarks/background_votes.py, 60 known + 40
    # unknown queries): Holstein open-set AUC 0.926 -> 0.978, score at a 2-fold tau 0.819 -> 0.896; nyala within
    # noise. Costs one descriptor matrix multiply per shortlisted photo.
    distinctive: bool = True
    # An animal with a box (Camtrap DP, MegaDetector, a manifest's bbox columns) is described from its box plus a
    # margin (context for the global embedders); only its keypoints inside the box itself are matched, so the
    # neighbour in a group photo or the ground around it never votes.
    box_only: bool = True
    # A fixed camera's scenery never votes: keypoints of a deployment's whole photos that recur at the same place
    # in its photos of other animals are dropped before matching (matching/scenery.py). Off until measured better
    # (benchmarks/camera_trap_levers.py; docs/accuracy.md).
    static_scenery: bool = False
    # Photos of each individual matched at the full budget: LNBNN's individuals bring their `lnbnn_photos`
    # best-voted photos, those of the first pass their best-voted others besides the one that qualified them, so
    # an individual is judged on several photos (see `combine_photos`), not on one. Replayed on every pair's
    # full-budget scores (benchmarks/local_matching.py --exhaustive, 25 queries each): 6 LNBNN individuals x 2
    # photos vs 12 x 1, at 17-20 pairs instead of 16: nyala top-1 0.20 -> 0.40, holstein 0.76 -> 0.96; on the
    # 300 nyala queries of benchmarks/accuracy_real.py, 0.250 -> 0.288 (docs/accuracy.md).
    lnbnn_photos: int = 2
    # An individual's score: its best photo's (1) or the noisy-OR of its best `combine_photos` photos' calibrated
    # scores (only for calibrated scores in [0, 1]; the uncalibrated fallback always takes the best photo).
    # Measured on Holstein's 250 open-set queries in one run (docs/accuracy.md, issue 24): the noisy-OR of 2
    # scored 0.753 (BAUS 0.604: two mediocre photos of a stranger add up to a confident match), the best photo
    # 0.926 at the same tau; on nyala it was worth +0.016 top-1 (300 queries). So one photo decides.
    combine_photos: int = 1
    # A second local matcher ("disk": DISK + LightGlue, `matching/local_matcher.DiskLightGlue`; "" none), scored
    # beside ALIKED and fused by the calibration, for the species whose `use_second` is 1. `registry calibrate
    # --second-matcher disk` measures it on each species' labelled pairs and sets `use_second` only where it
    # measured better (`Settings.second_matcher_margin`); on the dev sets (docs/accuracy.md) it was kept for
    # neither.
    second: str = ""
    use_second: int = 0
    # Per-species overrides of the matching stage (SPECIES_FIELDS): e.g. {"cow": {"lnbnn_individuals": 20}}.
    # Photos are described once at `max_keypoints` and `long_side`, so a species may use fewer keypoints (the
    # strongest ones), never more, and shares the working size.
    species: dict[str, dict[str, int]] = field(default_factory=dict)

    SPECIES_FIELDS = ("max_keypoints", "first_pass_keypoints", "full_rerank_individuals", "lnbnn_individuals",
                      "lnbnn_photos", "combine_photos", "use_second")

    def __post_init__(self) -> None:
        if self.engine not in LOCAL_ENGINES:
            raise ValueError(f"unknown local matching engine {self.engine!r}; known: {', '.join(LOCAL_ENGINES)}")
        if self.second not in SECOND_MATCHERS:
            raise ValueError(f"unknown second local matcher {self.second!r}; known: "
                             f"{', '.join(repr(m) for m in SECOND_MATCHERS)}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"the ratio test's threshold must be in (0, 1], not {self.ratio!r}")
        for species, overrides in self.species.items():
            unknown = set(overrides) - set(self.SPECIES_FIELDS)
            if unknown:
                raise ValueError(f"local matcher settings for {species!r}: {', '.join(sorted(unknown))} cannot be "
                                 f"set per species (only {', '.join(self.SPECIES_FIELDS)})")
            for name, value in overrides.items():
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"local matcher settings for {species!r}: {name} must be a whole number "
                                     f">= 0, not {value!r}")
            if overrides.get("use_second", 0) > 1:
                raise ValueError(f"local matcher settings for {species!r}: use_second is 0 or 1")
            if overrides.get("max_keypoints", 0) > self.max_keypoints:
                raise ValueError(f"local matcher settings for {species!r}: max_keypoints "
                                 f"{overrides['max_keypoints']} exceeds the {self.max_keypoints} keypoints photos "
                                 "are described with")

    def for_species(self, species: str) -> LocalMatcherSettings:
        """The matching-stage settings one species is matched with (its overrides on the registry's)."""
        overrides = self.species.get(species)
        return replace(self, **overrides, species={}) if overrides else self

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LocalMatcherSettings:
        return cls(**{**LEGACY_LOCAL, **data})


def default_local_matcher() -> LocalMatcherSettings:
    """The local matcher a new registry starts with: the measured defaults, or this machine's overrides from
    `REGISTRY_LOCAL_MATCHER` (JSON, e.g. '{"max_keypoints": 512}' on a slow laptop; the test suite uses it to
    keep code-path tests cheap). Once a registry exists its decision policy decides."""
    overrides = os.environ.get("REGISTRY_LOCAL_MATCHER")
    return LocalMatcherSettings(**json.loads(overrides)) if overrides else LocalMatcherSettings()


EMBEDDED_VECTOR_ENGINES = ("qdrant-edge", "qdrant-local")


@dataclass
class Settings:
    data_dir: Path = field(default_factory=lambda: Path("registry-data"))
    profile: str = "offline"
    database_url: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    # The embedded vector engine (without qdrant_url): "qdrant-edge", or "qdrant-local" (qdrant-client's local
    # mode, the embedded store before Qdrant Edge; kept to compare engines, `registry vectors migrate` leaves it).
    vector_engine: str = "qdrant-edge"
    device: str = "auto"  # auto = cuda, then mps, then cpu
    precision: str = "auto"  # auto = bf16/fp16 autocast on accelerators, fp32 on CPU; or fp32, bf16, fp16
    batch_size: int = 8
    decode_workers: int = 2  # threads decoding the next photos while the models run
    # Where ALIKED's dense backbone runs on a CPU: "auto" (ONNX Runtime when it is installed, else PyTorch),
    # "onnx" or "torch". Same keypoints and descriptors up to float rounding (tests/test_matching_engine.py);
    # benchmarks/identify_speed.py --runtime measures both. GPUs always run PyTorch.
    local_runtime: str = "auto"
    # The offline profile's ImageNet embedding ranks the true individual only ~7th of 20 on synthetic data,
    # so retrieval is kept broad and the local matcher (decisive there) reranks many individuals.
    ann_top_k: int = 100  # images retrieved from the vector index per query
    rerank_individuals: int = 30  # best individuals from retrieval that get local matching
    rerank_images_per_individual: int = 1
    # LNBNN votes over every candidate photo of the species while there are at most this many; beyond, over the
    # photos (at most `lnbnn_pool_photos_per_individual` each) of the individuals the global embedding finds
    # closest, so the cost of a query stops growing with the registry (benchmarks/identify_scale.py).
    lnbnn_pool_photos: int = 2000
    lnbnn_pool_photos_per_individual: int = 8
    match_threshold: float = 0.35  # open-set rule (tau) on the calibrated fused score
    alpha: float = 0.5  # final = alpha * WildFusion + (1 - alpha) * complementary global matcher (EVA02)
    # "wildfusion" (the paper's rule), "learned" (logistic fusion fitted by `registry calibrate`), or "auto":
    # learned for the offline profile, whose ImageNet global embedding is weak (measured in docs/accuracy.md),
    # WildFusion for the paper profile.
    fusion: str = "auto"
    # Before `registry calibrate` has run, decisions fall back to raw LightGlue match counts and this threshold.
    uncalibrated_threshold: float = 40.0
    # positives and as many negatives per species (isotonic fits are stable from a few hundred; each pair costs a
    # full-budget LightGlue match, ~0.25 s on a laptop CPU)
    calibration_pairs: int = 400
    # `registry calibrate --second-matcher`: a species keeps the second local matcher only when the learned fusion
    # with its scores separates the species' labelled pairs better out of sample (AUC, grouped by query photo) by
    # more than this. It costs ~0.4-0.6 s of CPU per photo described, so a tie is not worth it.
    second_matcher_margin: float = 0.01
    # Calibration positives must be re-sightings, not frames of one burst: photos from different surveys, or at
    # least this far apart in time when both have capture times.
    calibration_min_gap_hours: float = 1.0
    # `registry calibrate` then chooses tau per species on simulated open-set queries of the labelled photos:
    # this many queries per species (half known, half from individuals hidden as unknowns), and that fraction of
    # the individuals hidden.
    self_tune_queries: int = 120
    self_tune_unknown_fraction: float = 0.3
    # ... and the tau found is shrunk toward the policy's default tau as if this many simulated queries had chosen
    # it: a small labelled set's tau is mostly the prior, a large one's mostly its own.
    self_tune_prior_queries: int = 30
    # Space-time evidence (decide/spacetime.py): distance, time and speed from a candidate's sightings to the
    # query, recorded with each decision and shown on the match page's evidence line. Off: none is computed.
    spacetime: bool = True
    # ... and also a feature of the pair verifier. Off by default: measured harmful wherever it could be measured
    # (docs/accuracy.md: Holstein's times, the verifier 0.774 -> 0.610; synthetic camera traps with places, the
    # verifier put in force by its simulated queries and the decisions 0.947 -> 0.446), because simulated queries
    # hide the query's occasion and so teach the verifier time gaps that live queries do not have.
    spacetime_verifier: bool = False
    # With several writers (server stores), a writer resumes only pending writes older than this (a write in
    # flight in another worker is younger); a single writer resumes every pending write.
    resume_grace_seconds: float = 300.0
    # Photos of one deployment at most this far apart form one event (a burst): an animal's photos in it are
    # decided together. A sequence id from the source wins over it.
    event_interval_seconds: float = 60.0
    # Photo paths are stored relative to this folder (when under it), so a moved archive needs only a new root.
    photo_root: str | None = None
    # Times are stored in UTC. A time without an offset (a camera clock, a manifest's plain date-time) is read in
    # its location's time zone when known (a manifest's `time_zone` column), else in this IANA zone.
    time_zone: str = "UTC"
    species_threshold_offsets: dict[str, float] = field(default_factory=dict)
    orientation_rules: dict[str, dict[str, float]] = field(default_factory=dict)  # species -> viewpoint -> deg
    test_time_augmentation: bool = False
    # How cached ALIKED descriptors are stored: "int8" (8-bit codes, half the size) or "float16"
    # (benchmarks/feature_cache.py measures the difference in LightGlue's scores on real photos).
    feature_precision: str = "int8"
    local: LocalMatcherSettings = field(default_factory=default_local_matcher)
    weights: dict[str, str] = field(default_factory=dict)  # model name -> explicit weights file or folder
    allow_download: bool = False
    # HTTP API (`registry serve`)
    api_public_reads: bool = False  # read endpoints without a token
    api_max_upload_mb: float = 25.0
    api_import_root: str | None = None  # server folder that manifests given to POST /ingest must live in
    # unused since the workspace's queue shows every unreviewed decision (a margin filter narrows it); kept so
    # settings files that name it still load
    review_margin: float = 0.15
    web_tile_url: str | None = None  # a map tile server for the workspace's maps (none: coordinates only)
    # Not stored: whether the profile was chosen (stored settings, `init --profile`) rather than defaulted, so
    # a machine without a settings file takes the profile of the catalog's decision policy.
    profile_explicit: bool = field(default=False, compare=False)
    # Not stored: embedder name -> trained checkpoint in use (the decision policy says which).
    trained_weights: dict[str, str] = field(default_factory=dict, compare=False)

    # --- derived locations -------------------------------------------------------------------------------
    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'registry.sqlite').resolve()}"

    @property
    def display_database(self) -> str:
        """The catalog's location for messages: never a password."""
        if self.database_url is None:
            return self.sqlalchemy_url
        from sqlalchemy.engine import make_url

        return make_url(self.database_url).render_as_string(hide_password=True)

    @property
    def qdrant_path(self) -> Path:
        """qdrant-client local mode's folder (registries made before Qdrant Edge)."""
        return self.data_dir / "qdrant"

    @property
    def vectors_path(self) -> Path:
        """Qdrant Edge's folder: a shard per collection."""
        return self.data_dir / "vectors"

    @property
    def vector_engine_in_use(self) -> str:
        if not self.uses_embedded_qdrant:
            return "qdrant-server"
        return self.vector_engine

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def weights_dir(self) -> Path:
        return self.data_dir / "weights"

    @property
    def uses_embedded_qdrant(self) -> bool:
        return self.qdrant_url is None

    @property
    def needs_exclusive_lock(self) -> bool:
        """Embedded stores (SQLite file, local Qdrant folder) allow one writing process; a PostgreSQL server and a
        Qdrant server take concurrent writers (API workers), kept consistent by transactions and constraints."""
        return self.uses_embedded_qdrant or self.sqlalchemy_url.startswith("sqlite")

    @property
    def uses_learned_fusion(self) -> bool:
        return self.fusion == "learned" or (self.fusion == "auto" and self.profile != "paper")

    def threshold_for(self, species: str) -> float:
        return self.match_threshold + self.species_threshold_offsets.get(species, 0.0)

    @classmethod
    def for_profile(cls, profile: str, **values: object) -> Settings:
        """Defaults that belong to a profile: the paper's models are strong retrievers with 5-crop TTA, so a
        top-10 rerank suffices; the offline ImageNet embedding needs a broad rerank (measured in benchmarks)."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
        settings = cls(profile=profile, profile_explicit=True, **values)  # type: ignore[arg-type]
        if profile == "paper":
            settings.test_time_augmentation = True
            settings.rerank_individuals = 10
        if profile == "tiny-test":  # random matchers: code paths only, so the cheapest budgets
            settings.local = LocalMatcherSettings(max_keypoints=256, first_pass_keypoints=128)
        return settings

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    # --- persistence -------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """What is stored with the registry; connection targets and secrets stay out of the file."""
        data = asdict(self)
        for transient in ("data_dir", "database_url", "qdrant_url", "qdrant_api_key", "profile_explicit",
                          "trained_weights"):
            data.pop(transient)
        return data

    def save(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / SETTINGS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(
        cls,
        data_dir: Path | None = None,
        database_url: str | None = None,
        qdrant_url: str | None = None,
        qdrant_api_key: str | None = None,
    ) -> Settings:
        """Settings for a data directory: stored file, then environment, then explicit arguments win."""
        data_dir = Path(data_dir or os.environ.get("REGISTRY_HOME") or "registry-data")
        settings = cls(data_dir=data_dir)
        path = data_dir / SETTINGS_FILE
        if path.exists():
            stored = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            unknown = set(stored) - known
            if unknown:
                raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
            for key, value in stored.items():
                if key == "local":
                    value = LocalMatcherSettings.from_json(value)
                setattr(settings, key, value)
            settings.profile_explicit = True
        settings.database_url = database_url or os.environ.get("REGISTRY_DATABASE_URL") or settings.database_url
        settings.qdrant_url = qdrant_url or os.environ.get("REGISTRY_QDRANT_URL") or settings.qdrant_url
        settings.qdrant_api_key = (
            qdrant_api_key or os.environ.get("REGISTRY_QDRANT_API_KEY") or settings.qdrant_api_key
        )
        settings.photo_root = os.environ.get("REGISTRY_PHOTO_ROOT") or settings.photo_root
        if settings.profile not in PROFILES:
            raise ValueError(f"{path}: unknown profile {settings.profile!r}; known: {', '.join(PROFILES)}")
        try:
            ZoneInfo(settings.time_zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{path}: unknown time_zone {settings.time_zone!r} (an IANA name such as "
                             "Europe/Prague or UTC)") from exc
        if settings.vector_engine not in EMBEDDED_VECTOR_ENGINES:
            raise ValueError(f"{path}: unknown vector_engine {settings.vector_engine!r}; known: "
                             f"{', '.join(EMBEDDED_VECTOR_ENGINES)}")
        return settings

    @property
    def exists(self) -> bool:
        return (self.data_dir / SETTINGS_FILE).exists()
