"""What a service asks of the open registry: its stores (catalog, vector index, feature cache), its models, the
decision policy in force, and the other services it calls. `services.registry.Registry` provides it; the services
name this protocol instead of `Registry`, so nothing in `services/` imports back the object that builds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from registry.decide.policy import DecisionPolicy
from registry.decide.scoring import IndividualScore, Scorer
from registry.matching.imaging import ImageError
from registry.matching.local_matcher import AlikedLightGlue, LocalFeatures
from registry.matching.pipeline import Described, Pipeline
from registry.settings import Settings
from registry.store.catalog import Catalog
from registry.store.feature_store import FeatureStore
from registry.store.stores import Stores
from registry.store.vector_index import VectorIndex

Box = tuple[float, float, float, float]


class Identifying(Protocol):
    """What other services call of identification (`services.identification.Identifier`)."""

    def describe(self, paths: list[Path], species: list[str], viewpoints: list[str | None],
                 boxes: list[Box | None] | None = None) -> list[Described | ImageError]: ...

    def candidate_features(self, annotation_ids: list[int], problems: list[str] | None = None,
                           scenery: bool = True) -> dict[int, LocalFeatures]: ...

    def forget_matching_state(self) -> None: ...

    def background_of(self, query: LocalFeatures, vector: Any, species: str, viewpoint: str | None,
                      budget: int, exclude_annotations: tuple[int, ...] = (),
                      exclude_individuals: tuple[int, ...] = ()) -> Any: ...

    def rank_stored(self, annotation_id: int, species: str, viewpoint: str | None, scorer: Scorer,
                    hidden_images: tuple[int, ...], hidden_individuals: tuple[int, ...] = (),
                    unseen: tuple[int, ...] = ()) -> list[IndividualScore]: ...


class Recording(Protocol):
    """What other services call of the write path (`services.recording.Recorder`)."""

    def resume_pending(self, force: bool = False) -> int: ...

    def write(self, batch: list[Any], survey: str | None,
              record: Callable[[Any, list[Any]], list[int | None]]) -> list[Any]: ...


class Calibrating(Protocol):
    """What other services call of calibration (`services.calibrating.CalibrationService`)."""

    def calibrate(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...


class RegistryPort(Protocol):
    settings: Settings
    stores: Stores
    catalog: Catalog
    index: VectorIndex

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def features(self) -> FeatureStore: ...

    def features_of(self, matcher: AlikedLightGlue) -> FeatureStore: ...

    @property
    def collections(self) -> dict[str, str]: ...

    def use_collection(self, embedder: str, collection: str) -> None: ...

    @property
    def policy(self) -> DecisionPolicy: ...

    def set_policy(self, policy: DecisionPolicy) -> DecisionPolicy: ...

    @property
    def scorer(self) -> Scorer: ...

    def scorer_in_force(self) -> tuple[int, Scorer]: ...

    identification: Identifying
    recorder: Recording
    calibration: Calibrating
