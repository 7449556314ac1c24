"""Moving a registry to another embedder version: `registry reembed`, `registry vectors prune`, and trained
models carried between registries (`registry models export|install|list`).

Reembedding writes every indexed annotation's vector into the new version's collection, batch by batch; what is
already there is skipped, so a killed run resumes where it stopped. Then the registry is recalibrated with the
new version, and one new decision-policy row (the atomic switch) names the trained checkpoint, the new model
versions and the new calibrations. Until that row exists every process keeps deciding with the old version;
the old collection stays until `registry vectors prune`.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from registry.matching.embedders import CARD_FORMAT, card_path, load_trained_embedder
from registry.matching.imaging import ImageError
from registry.matching.weights import file_sha256
from registry.services.training import TRAINED_DIR, TrainingService
from registry.store import crashpoints
from registry.store.catalog import CatalogError
from registry.store.tables import Embedder
from registry.store.vector_index import VectorPoint

if TYPE_CHECKING:
    from registry.services.port import RegistryPort as Registry


class ModelError(CatalogError):
    pass


class ModelVersions:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # --- what is registered ----------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every embedder version: in force or not, its parent, its validation, its vectors."""
        registry = self.registry
        in_force = set(registry.collections.values())
        existing = set(registry.index.collections())
        with registry.catalog.transaction() as session:
            rows = session.scalars(select(Embedder).order_by(Embedder.id)).all()
            parents = {r.id: r.version for r in rows}
            out = []
            for row in rows:
                best = ((row.card or {}).get("validation") or {}).get("best") or {}
                out.append({
                    "name": row.name, "version": row.version, "in_force": row.collection in in_force,
                    "parent": parents.get(row.parent_id) if row.parent_id else None,
                    "trained": row.weights_path is not None, "checkpoint": row.weights_path,
                    "validation_score": best.get("val_score"), "validation_top1": best.get("val_top1"),
                    "vectors": registry.index.count(row.collection) if row.collection in existing else 0,
                    "pruned_at": row.pruned_at.isoformat(timespec="seconds") if row.pruned_at else None,
                    "created_at": row.created_at.isoformat(timespec="seconds")})
        return out

    def _row(self, version: str | None) -> Embedder:
        """A trained version by its version string (or its checkpoint's stem); the newest trained one if None."""
        with self.registry.catalog.transaction() as session:
            query = select(Embedder).where(Embedder.weights_path.is_not(None))
            rows = session.scalars(query.order_by(Embedder.id.desc())).all()
            for row in rows:
                if version is None or version in (row.version, Path(row.weights_path or "").stem):
                    session.expunge(row)
                    return row
        known = ", ".join(r.version for r in rows) or "none"
        raise ModelError(f"no trained embedder version {version!r} in this registry (trained: {known}); "
                         "`registry train` or `registry models install` makes one")

    # --- reembed ---------------------------------------------------------------------------------------
    def reembed(self, version: str | None = None, batch: int | None = None, recalibrate: bool = True,
                say: Callable[[str], None] = lambda _m: None, progress: Callable[[int], None] | None = None,
                actor: str = "registry", calibration_pairs: int | None = None) -> dict[str, Any]:
        """Vectors of every indexed annotation from the trained version, then recalibration and the policy switch."""
        registry = self.registry
        row = self._row(version)
        if row.pruned_at is not None:
            raise ModelError(f"{row.version} was pruned; install or train it again")
        checkpoint = registry.settings.data_dir / str(row.weights_path)
        pipeline = registry.pipeline
        embedder = load_trained_embedder(checkpoint, **pipeline.options)
        if embedder.name not in registry.collections:
            raise ModelError(f"{row.version} is a {embedder.name} version; this registry's embedders are "
                             f"{', '.join(registry.collections)}")
        registry.recorder.resume_pending()
        batch = batch or max(1, registry.settings.batch_size)
        if registry.collections[embedder.name] == row.collection:
            return {"version": row.version, "already_in_force": True}
        registry.index.ensure_collection(row.collection, embedder.dimension)
        states = {i: s for i, s in registry.catalog.annotation_states().items() if s["status"] == "indexed"}
        done = {annotation_id for annotation_id, _ in registry.index.payloads(row.collection)}
        todo = sorted(set(states) - done)
        say(f"reembedding {len(todo)} of {len(states)} annotations into {row.collection} ({len(done)} already there)")
        problems: list[str] = []
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            images = pipeline.load_many([Path(states[i]["path"]) for i in chunk], [states[i]["species"] for i in chunk],
                                        [states[i]["viewpoint"] for i in chunk], [states[i]["box"] for i in chunk])
            good = [(i, im) for i, im in zip(chunk, images, strict=True) if not isinstance(im, ImageError)]
            problems += [f"annotation {i}: {im}" for i, im in zip(chunk, images, strict=True)
                         if isinstance(im, ImageError)]
            vectors = embedder.embed([im for _, im in good]) if good else []
            registry.index.upsert(row.collection, [
                VectorPoint(i, vector, states[i]["individual_id"], states[i]["species"], states[i]["viewpoint"],
                            states[i]["survey_id"], states[i]["image_id"], states[i]["location_id"])
                for (i, _), vector in zip(good, vectors, strict=True)])
            crashpoints.reached("reembed-batch")
            if progress:
                progress(len(chunk))
        registry.index.flush()  # the new collection is on disk before the policy points at it
        if problems:
            raise ModelError(f"{len(problems)} photo(s) could not be read, so the switch to {row.version} is not "
                             f"made (nothing is lost; rerun after `registry relocate`): " + "; ".join(problems[:5]))
        old = pipeline.replace_embedder(embedder)
        old_collection = registry.collections[embedder.name]
        registry.use_collection(embedder.name, row.collection)
        relative = str(row.weights_path)
        switch = {"embedder_weights": {**registry.policy.embedder_weights, embedder.name: relative}}
        try:
            if recalibrate:
                summary = registry.calibration.calibrate(per_class=calibration_pairs, actor=actor,
                                                         policy_changes=switch, reason=f"reembed into {row.version}")
                policy_version = summary["policy_version"]
            else:
                summary = None
                policy = registry.set_policy(registry.policy.derive(
                    f"reembed into {row.version} (not recalibrated: raw-score fallback until `registry calibrate`)",
                    actor, **switch))
                policy_version = policy.version
        except BaseException:
            pipeline.replace_embedder(old)
            registry.use_collection(embedder.name, old_collection)
            raise
        return {"version": row.version, "collection": row.collection, "reembedded": len(todo),
                "annotations": len(states), "previous_collection": old_collection, "policy_version": policy_version,
                "calibration": summary}

    def unfinished(self, indexed: int | None = None) -> list[dict[str, Any]]:
        """Trained versions whose collection holds vectors but is not in force (a reembed that stopped).
        `indexed`: the number of indexed annotations, when the caller has already counted them."""
        registry = self.registry
        in_force = set(registry.collections.values())
        existing = set(registry.index.collections())
        if indexed is None:
            indexed = sum(1 for s in registry.catalog.annotation_states().values() if s["status"] == "indexed")
        out = []
        with registry.catalog.transaction() as session:
            for row in session.scalars(select(Embedder).where(Embedder.weights_path.is_not(None))):
                if row.collection in in_force or row.collection not in existing or row.pruned_at:
                    continue
                count = registry.index.count(row.collection)
                out.append({"version": row.version, "vectors": count, "annotations": indexed})
        return out

    # --- prune -----------------------------------------------------------------------------------------
    def prune(self, dry_run: bool = False) -> list[dict[str, Any]]:
        """Delete the collections of embedder versions not in force (their SQL rows stay, for the record)."""
        registry = self.registry
        in_force = set(registry.collections.values())
        existing = set(registry.index.collections())
        pruned = []
        with registry.catalog.transaction() as session:
            for row in session.scalars(select(Embedder).order_by(Embedder.id)):
                if row.collection in in_force or row.pruned_at is not None:
                    continue
                count = registry.index.count(row.collection) if row.collection in existing else 0
                pruned.append({"version": row.version, "collection": row.collection, "vectors": count})
                if not dry_run:
                    if row.collection in existing:
                        registry.index.drop_collection(row.collection)
                    row.pruned_at = datetime.now(UTC).replace(tzinfo=None)
        return pruned

    # --- carry a trained model to another registry ----------------------------------------------------------
    def export(self, version: str | None, target: Path) -> Path:
        """A zip of the checkpoint, its card and its training curve."""
        row = self._row(version)
        checkpoint = self.registry.settings.data_dir / str(row.weights_path)
        target = Path(target)
        if target.suffix != ".zip":
            target = target / f"{checkpoint.stem}.zip" if target.is_dir() else target.with_suffix(".zip")
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in (checkpoint, card_path(checkpoint), checkpoint.with_suffix(".png")):
                if path.exists():
                    archive.write(path, path.name)
        return target

    def install(self, archive_path: Path) -> dict[str, Any]:
        """Install an exported model: checked (card format, sha256, same embedder and parent weights as this
        registry's base), copied under weights/trained/, registered; `registry reembed` then puts it in force."""
        registry = self.registry
        archive_path = Path(archive_path)
        try:
            archive = zipfile.ZipFile(archive_path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{archive_path}: not a model archive ({exc})") from exc
        with archive:
            names = archive.namelist()
            cards = [n for n in names if n.endswith(".json") and "/" not in n]
            if len(cards) != 1:
                raise ModelError(f"{archive_path}: expected one card (.json), found {len(cards)}")
            try:
                card = json.loads(archive.read(cards[0]))
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise ModelError(f"{archive_path}: the card {cards[0]} is not readable ({exc})") from exc
            weights = cards[0][: -len(".json")] + ".safetensors"
            if card.get("format") != CARD_FORMAT or weights not in names:
                raise ModelError(f"{archive_path}: not an exported registry model (card format or weights missing)")
            base = registry.pipeline.primary
            if card["name"] != base.name:
                raise ModelError(f"{archive_path}: a {card['name']} model; this registry's embedder is {base.name}")
            parent_sha = card["parent"]["weights_sha256"]
            registry.collections  # noqa: B018  (registers the loaded versions)
            with registry.catalog.transaction() as session:
                known = set(session.scalars(select(Embedder.weights_sha256).where(Embedder.name == base.name)))
            if parent_sha not in known:
                raise ModelError(f"{archive_path}: trained from {base.name} weights {parent_sha[:12]}, which this "
                                 f"registry has never used ({', '.join(sorted(k[:12] for k in known))})")
            folder = registry.settings.weights_dir / TRAINED_DIR
            folder.mkdir(parents=True, exist_ok=True)
            # every file is unpacked beside its final name and checked first: a damaged copy of a model that
            # is already installed (maybe in force) never replaces or deletes it
            staged: dict[str, Path] = {}
            try:
                for name in (weights, cards[0], cards[0][: -len(".json")] + ".png"):
                    if name in names:
                        staged[name] = folder / f".{name}.installing"
                        with archive.open(name) as source, open(staged[name], "wb") as out:
                            shutil.copyfileobj(source, out)
                if file_sha256(staged[weights]) != card["weights_sha256"]:
                    raise ModelError(f"{archive_path}: the weights' sha256 differs from the card's (damaged "
                                     "archive); nothing was installed or replaced")
                for name, path in staged.items():
                    path.replace(folder / name)
            except (OSError, zipfile.BadZipFile) as exc:
                raise ModelError(f"{archive_path}: cannot be unpacked ({exc}); nothing was installed") from exc
            finally:
                for path in staged.values():
                    path.unlink(missing_ok=True)
        checkpoint = folder / weights
        version = TrainingService(registry).register(checkpoint, card)
        return {"version": version, "checkpoint": str(checkpoint), "validation": card.get("validation")}
