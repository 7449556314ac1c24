"""The open registry: its stores, its models (loaded on first use), the decision policy in force, and the
services over them — `identification` (identify, record), `recorder` (the crash-safe write path, resume) and
`calibration`. Ingestion (`registry.ingest`) and curation (`registry.curation`) build on this object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

from registry.decide.policy import DecisionPolicy, build_scorer
from registry.decide.scoring import Scorer
from registry.matching.embedders import TorchEmbedder
from registry.matching.local_matcher import AlikedLightGlue
from registry.matching.pipeline import Pipeline
from registry.settings import LocalMatcherSettings, Settings
from registry.store import migrate
from registry.store.catalog import Catalog, CatalogError
from registry.store.feature_store import FeatureStore
from registry.store.locking import RegistryLock
from registry.store.stores import RegistryNotInitialisedError, Stores
from registry.store.tables import Embedder
from registry.store.vector_index import collection_name
from registry.store.vector_migration import migrate_legacy_vectors

log = logging.getLogger(__name__)

__all__ = ["PolicyChangedError", "ProfileMismatchError", "Registry", "RegistryNotInitialisedError",
           "VectorIndexLostError", "initial_policy"]


class ProfileMismatchError(CatalogError):
    pass


class VectorIndexLostError(CatalogError):
    """SQL holds indexed annotations whose vector collection is missing or empty."""


class PolicyChangedError(CatalogError):
    """Another process put a policy in force that needs other models than this one loaded."""


def initial_policy(settings: Settings, reason: str) -> DecisionPolicy:
    """The first policy of a registry: its profile, the settings' decision parameters, nothing calibrated."""
    return DecisionPolicy(
        profile=settings.profile, fusion="learned" if settings.uses_learned_fusion else "wildfusion",
        alpha=settings.alpha, default_threshold=settings.match_threshold,
        uncalibrated_threshold=settings.uncalibrated_threshold, matcher_settings=settings.local.to_json(),
        thresholds={sp: settings.threshold_for(sp) for sp in settings.species_threshold_offsets},
        created_by="registry init", reason=reason)


class Registry:
    def __init__(self, settings: Settings, pipeline: Pipeline | None = None, lock_wait: float = 0.0,
                 repairing: bool = False) -> None:
        self.stores = Stores(settings, write=True, lock_wait=lock_wait)
        self.repairing = repairing  # doctor: open even when the vectors are lost, to rebuild them
        try:
            self.catalog: Catalog = self.stores.catalog
            self.index = self.stores.index
            self._policy = self._policy_in_force(settings)
            # the policy, not this machine's settings file, decides the profile and the local matcher
            self.settings = replace(settings, profile=self._policy.profile,
                                    local=LocalMatcherSettings.from_json(self._policy.matcher_settings),
                                    trained_weights=self._trained_weights(settings, self._policy))
        except BaseException:
            self.stores.close()
            raise
        self._pipeline = pipeline
        self._collections: dict[str, str] | None = None
        self._scorer: tuple[int | None, Scorer] | None = None
        self._features: FeatureStore | None = None
        self._second_features: tuple[str, FeatureStore] | None = None  # (extractor version, its cache)
        from registry.services.calibrating import CalibrationService
        from registry.services.identification import Identifier
        from registry.services.recording import Recorder

        self.identification = Identifier(self)
        self.recorder = Recorder(self)
        self.calibration = CalibrationService(self)

    def _policy_in_force(self, settings: Settings) -> DecisionPolicy:
        policy = self.catalog.current_policy()
        if policy is None:  # a registry made before policies lived in the catalog: adopt its settings file
            policy = initial_policy(settings, "adopted from settings.json (registry made before decision policies)")
            newest = self.catalog.newest_calibration_batch(None)
            if newest is not None:
                batch, versions = newest
                policy = replace(policy, calibration_batches={"*": batch}, model_versions=versions)
            policy = self.catalog.save_policy(policy)
        if settings.profile_explicit and settings.profile != policy.profile:
            raise ProfileMismatchError(
                f"this registry's decision policy uses profile {policy.profile!r}, but {settings.profile!r} was "
                "asked for; its vectors cannot be mixed with another profile's")
        if settings.local != LocalMatcherSettings.from_json(policy.matcher_settings) and settings.exists:
            log.warning("local matcher settings in %s differ from the decision policy's (version %s); the "
                        "policy's are used", settings.data_dir / "settings.json", policy.version)
        return policy

    @staticmethod
    def _trained_weights(settings: Settings, policy: DecisionPolicy) -> dict[str, str]:
        """The trained checkpoints the policy puts in force, as paths on this machine (under the data dir)."""
        return {name: str(settings.data_dir / relative) for name, relative in policy.embedder_weights.items()}

    # --- lifecycle -------------------------------------------------------------------------------------
    @classmethod
    def init(cls, settings: Settings,
             vector_progress: Callable[[str, int, int], None] | None = None) -> DecisionPolicy:
        """Create or upgrade a registry: run the migrations, store the settings, start the decision policy, move
        vectors from qdrant-client's local mode into Qdrant Edge."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock = RegistryLock(settings.data_dir)
        lock.acquire()
        try:
            catalog = Catalog(settings.sqlalchemy_url)
            try:
                migrate.upgrade(catalog.engine)
                policy = catalog.current_policy()
                if policy is None:
                    policy = catalog.save_policy(initial_policy(settings, "registry init"))
                elif policy.profile != settings.profile and settings.profile_explicit:
                    raise ProfileMismatchError(
                        f"this registry uses profile {policy.profile!r}; its vectors cannot be mixed with "
                        f"{settings.profile!r}")
            finally:
                catalog.close()
            settings.save()
            migrate_legacy_vectors(settings, progress=vector_progress)
            return policy
        finally:
            lock.release()

    def close(self) -> None:
        for store in (self._features, self._second_features[1] if self._second_features else None):
            if store is not None:
                store.close()
        self.stores.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- models and their storage ----------------------------------------------------------------------
    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.settings)
        return self._pipeline

    @property
    def features(self) -> FeatureStore:
        if self._features is None:
            self._features = FeatureStore(self.settings.features_dir, self.pipeline.local.extractor_version,
                                          self.settings.feature_precision)
        return self._features

    def features_of(self, matcher: AlikedLightGlue) -> FeatureStore:
        """The feature cache of one local matcher: ALIKED's (`features`) or the second matcher's, each in the
        folder of its extractor version."""
        if matcher is self.pipeline.local:
            return self.features
        if self._second_features is None or self._second_features[0] != matcher.extractor_version:
            if self._second_features is not None:
                self._second_features[1].close()
            self._second_features = (matcher.extractor_version, FeatureStore(
                self.settings.features_dir, matcher.extractor_version, self.settings.feature_precision))
        return self._second_features[1]

    def _register_embedders(self, embedders: list[TorchEmbedder]) -> dict[str, str]:
        """Each embedder version's collection, registered in the `embedders` table. Vectors of another version
        or of another profile's embedders are never mixed in: such a registry is refused."""
        names = {e.name for e in embedders}
        newly: set[str] = set()  # embedders registered by this call: their collections are new, empty is right
        out = {}
        with self.catalog.transaction() as session:
            registered = list(session.scalars(select(Embedder)))
            strangers = sorted({r.name for r in registered} - names)
            if strangers:
                raise ProfileMismatchError(
                    f"this registry's vectors were made by {', '.join(strangers)}, which the {self.settings.profile!r} "
                    f"profile does not load ({', '.join(sorted(names))}); open it with its own profile")
            for embedder in embedders:
                rows = [r for r in registered if r.name == embedder.name]
                same = [r for r in rows if r.version == embedder.version]
                if rows and not same:
                    raise CatalogError(
                        f"this registry's vectors were made by {embedder.name} version {rows[0].version}, but "
                        f"version {embedder.version} is loaded now; refusing to mix vectors of two model versions "
                        "(use the original weights)")
                name = collection_name(embedder.version)
                if not same:
                    newly.add(embedder.name)
                    session.add(Embedder(name=embedder.name, version=embedder.version, dimension=embedder.dimension,
                                         weights_sha256=embedder.weights_sha256, collection=name))
                out[embedder.name] = name
        self._refuse_lost_vectors([out[n] for n in sorted(names - newly)])
        for embedder in embedders:
            self.index.ensure_collection(out[embedder.name], embedder.dimension)
        return out

    def _refuse_lost_vectors(self, collections: list[str]) -> None:
        """A collection the catalog registered that is gone or empty while SQL holds indexed annotations (a lost
        `vectors/` folder, a reset Qdrant volume) is refused: recreating it empty would make every photo a
        "new individual" from now on."""
        if self.repairing or not collections:
            return
        present = set(self.index.collections())
        lost = [c for c in collections if c not in present or self.index.count(c) == 0]
        counts = self.catalog.stats() if lost else {"annotations": 0, "pending_annotations": 0}
        indexed = counts["annotations"] - counts["pending_annotations"]
        if lost and indexed:
            where = self.settings.vectors_path if self.settings.uses_embedded_qdrant else self.settings.qdrant_url
            raise VectorIndexLostError(
                f"the vector index at {where} has lost collection(s) {', '.join(lost)} "
                f"({'missing' if lost[0] not in present else 'empty'}) while the catalog holds {indexed} indexed "
                "annotations; nothing was changed. Restore the vectors from a backup, or rebuild them from the "
                "photos with `registry doctor --repair`")

    @property
    def collections(self) -> dict[str, str]:
        """Embedder name -> its Qdrant collection, one per global embedder of the profile."""
        if self._collections is None:
            self._collections = self._register_embedders(self.pipeline.embedders)
        return self._collections

    def use_collection(self, embedder: str, collection: str) -> None:
        """Search and write `embedder`'s vectors in `collection` from now on, in this process (reembedding)."""
        self.collections[embedder] = collection
        self._scorer = None

    # --- the decision policy ---------------------------------------------------------------------------
    @property
    def policy(self) -> DecisionPolicy:
        """The policy in force, re-read when another process stored a newer version. A newer version that needs
        other models than this process loaded (another profile, embedder weights, local matcher — a `reembed`
        elsewhere) is refused: deciding on would score with the wrong models or fall back to raw match counts
        and write vectors into a collection no longer in force."""
        newest = self.catalog.current_policy()
        if newest is not None and newest.version != self._policy.version:
            if (newest.profile != self._policy.profile or newest.matcher_settings != self._policy.matcher_settings
                    or newest.embedder_weights != self._policy.embedder_weights):
                raise PolicyChangedError(
                    f"decision policy version {newest.version} (made by {newest.created_by}: {newest.reason}) "
                    f"needs other models than this process loaded for version {self._policy.version}; nothing "
                    "was decided: restart this process (or reopen the registry) to load them")
            self._policy = newest
        return self._policy

    def set_policy(self, policy: DecisionPolicy) -> DecisionPolicy:
        """Store a new policy version; it is in force from the next decision on."""
        self._policy = self.catalog.save_policy(policy)
        self._scorer = None
        return self._policy

    @property
    def scorer(self) -> Scorer:
        """The policy's scorer for the loaded models (rebuilt when the policy changes)."""
        return self.scorer_in_force()[1]

    def scorer_in_force(self) -> tuple[int, Scorer]:
        """The policy version and its scorer, read together: a decision records the version that scored it."""
        policy = self.policy
        if self._scorer is None or self._scorer[0] != policy.version:
            pipeline = self.pipeline
            calibrations = self.catalog.load_calibrations(set(policy.calibration_batches.values()))
            complementary = pipeline.complementary.name if pipeline.complementary else None
            second = pipeline.second.name if pipeline.second is not None else None
            self._scorer = (policy.version, build_scorer(policy, calibrations, pipeline.versions,
                                                         pipeline.primary.name, pipeline.local.name, complementary,
                                                         second))
        return self._scorer  # type: ignore[return-value]

    # --- the services, for callers that want one call ----------------------------------------------------
    def identify(self, path: Path, species: str, viewpoint: str | None = None, record: bool = False,
                 **fields: Any) -> Any:
        return self.identification.identify(path, species, viewpoint, record=record, **fields)

    def calibrate(self, per_class: int | None = None, species: str | None = None, seed: int = 0,
                  learned: bool = True, progress: Any = None, actor: str = "registry",
                  self_tune: bool = True, matching: dict[str, dict[str, int]] | None = None,
                  engine: str | None = None, distinctive: bool | None = None,
                  static_scenery: bool | None = None, second_matcher: str | None = None) -> dict[str, Any]:
        return self.calibration.calibrate(per_class, species, seed, learned, progress, actor, self_tune,
                                          matching=matching, engine=engine, distinctive=distinctive,
                                          static_scenery=static_scenery, second_matcher=second_matcher)

    @property
    def embedder_versions(self) -> Any:
        """Embedder versions: list, reembed, prune, export, install (`registry.services.reembedding`; the CLI's
        `registry models` shows them beside the profile's weights)."""
        from registry.services.reembedding import ModelVersions

        return ModelVersions(self)

    @property
    def training(self) -> Any:
        from registry.services.training import TrainingService

        return TrainingService(self)
