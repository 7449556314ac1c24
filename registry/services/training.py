"""`registry train`: fine-tune the primary global embedder on the registry's labelled photos and register the
result as a new embedder version (checkpoint + card under `<data dir>/weights/trained/`). Nothing changes for
identification until `registry reembed` moves the vectors and switches the decision policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from registry.learning.trainer import Trainer, TrainingError, TrainItem, TrainSettings
from registry.matching.embedders import CARD_FORMAT, TorchEmbedder, architecture_of, card_path
from registry.matching.imaging import ImageError
from registry.matching.weights import file_sha256
from registry.store.tables import Embedder
from registry.store.vector_index import collection_name

if TYPE_CHECKING:
    from registry.services.port import RegistryPort as Registry

TRAINED_DIR = "trained"
FLANKS = {"left", "right"}


def flank_specific(viewpoints: set[str | None]) -> bool:
    """A species photographed on left and right flanks is matched per flank (the two share no pattern), so a
    class is an individual x flank and mirroring is never an augmentation."""
    return bool({v for v in viewpoints if v} >= FLANKS)


class TrainingService:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def training_items(self, species: str | None, say: Callable[[str], None]) -> tuple[list[TrainItem], dict]:
        """The labelled photos (reference, confirmed, corrected), decoded as the pipeline decodes them."""
        registry = self.registry
        labelled = registry.catalog.labelled_annotations(species)
        if not labelled:
            raise TrainingError("no labelled photos to train on: ingest reference photos with identities, or "
                                "confirm decisions")
        states = registry.catalog.annotation_states([i["annotation_id"] for i in labelled])
        by_species: dict[str, set[str | None]] = {}
        for item in labelled:
            by_species.setdefault(item["species"], set()).add(item["viewpoint"])
        flanked = {sp for sp, views in by_species.items() if flank_specific(views)}
        items, unreadable = [], []
        for item in labelled:
            state = states[item["annotation_id"]]
            try:
                image = registry.pipeline.load(Path(state["path"]), item["species"], item["viewpoint"], state["box"])
            except ImageError as exc:
                unreadable.append(f"annotation {item['annotation_id']}: {exc}")
                continue
            label = f"{item['species']}/{item['individual_id']}"
            if item["species"] in flanked:
                label += f"/{item['viewpoint'] or 'unknown'}"
            items.append(TrainItem(image, label, item["species"]))
        for problem in unreadable[:5]:
            say(f"skipped (unreadable): {problem}")
        summary = {"photos": len(items), "unreadable": len(unreadable), "species": sorted(by_species),
                   "flank_specific": sorted(flanked),
                   "class_unit": {sp: "individual x flank" if sp in flanked else "individual" for sp in by_species}}
        return items, summary

    def train(self, settings: TrainSettings | None = None, species: str | None = None,
              say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
        """Train, write the checkpoint and its card, register the new version; returns the card."""
        from safetensors.torch import save_file

        registry = self.registry
        settings = settings or TrainSettings()
        parent = registry.pipeline.primary
        architecture = architecture_of(parent)
        items, training_set = self.training_items(species, say)
        flanked = set(training_set["flank_specific"])
        settings.flips = [sp for sp in settings.flips if sp not in flanked]  # mirrored flanks are other animals
        result = Trainer(parent, settings, registry.pipeline.device, say).fit(items)
        folder = registry.settings.weights_dir / TRAINED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        checkpoint = folder / f"{parent.name}-{stamp}.safetensors"
        state = {k: v.detach().contiguous().cpu() for k, v in result.model.state_dict().items()}
        tmp = checkpoint.with_suffix(".tmp")
        save_file(state, str(tmp))
        tmp.replace(checkpoint)
        sha = file_sha256(checkpoint)
        size = settings.input_size
        card = {
            "format": CARD_FORMAT, "name": parent.name, "architecture": architecture,
            "dimension": parent.dimension, "weights_sha256": sha,
            "preprocessing": {"input_size": [size, size], "mean": list(parent.preprocessing.mean),
                              "std": list(parent.preprocessing.std), "resize": "pad"},
            "parent": {"version": parent.version, "weights_sha256": parent.weights_sha256},
            "profile": registry.pipeline.profile,
            "training_set": {**training_set, "classes": result.classes, "train_photos": result.train_photos,
                             "validation_photos": result.validation_photos},
            "settings": settings.to_json(), "validation": result.validation, "best_epoch": result.best_epoch,
            "history": result.history, "seconds": round(result.seconds, 1), "device": registry.pipeline.device,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        card_path(checkpoint).write_text(json.dumps(card, indent=2) + "\n")
        self._plot(result.history, checkpoint.with_suffix(".png"))
        trained = self.register(checkpoint, card)
        return {**card, "version": trained, "checkpoint": str(checkpoint)}

    def register(self, checkpoint: Path, card: dict[str, Any]) -> str:
        """Register a trained checkpoint as an embedder version of this registry (not yet in force)."""
        registry = self.registry
        version = TorchEmbedder.version_for(card["name"], card["weights_sha256"],
                                            registry.settings.test_time_augmentation)
        parent_version = card["parent"]["version"]
        registry.collections  # noqa: B018  (registers the loaded versions, the parent among them)
        relative = str(Path(checkpoint).resolve().relative_to(registry.settings.data_dir.resolve()))
        with registry.catalog.transaction() as session:
            existing = session.scalar(select(Embedder).where(Embedder.name == card["name"],
                                                             Embedder.version == version))
            if existing is not None:
                return version
            parent = session.scalar(select(Embedder).where(Embedder.name == card["name"],
                                                           Embedder.version == parent_version))
            session.add(Embedder(name=card["name"], version=version, dimension=int(card["dimension"]),
                                 weights_sha256=card["weights_sha256"], collection=collection_name(version),
                                 parent_id=parent.id if parent else None, weights_path=relative, card=card))
        return version

    @staticmethod
    def _plot(history: list[dict[str, float]], path: Path) -> None:
        """The training curve (loss and validation score per epoch), for a person to look at."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [h["epoch"] for h in history]
        figure, left = plt.subplots(figsize=(6, 3.5))
        left.plot(epochs[1:], [h["loss"] for h in history[1:]], color="tab:red", marker="o", label="training loss")
        left.set_xlabel("epoch")
        left.set_ylabel("loss", color="tab:red")
        right = left.twinx()
        right.plot(epochs, [h["val_score"] for h in history], color="tab:blue", marker="s",
                   label="validation open-set score")
        right.plot(epochs, [h["val_top1"] for h in history], color="tab:green", marker="^", label="validation top-1")
        right.set_ylim(0, 1)
        right.set_ylabel("held-out identities")
        figure.legend(loc="lower center", ncol=3, fontsize=7)
        figure.tight_layout(rect=(0, 0.08, 1, 1))
        figure.savefig(path, dpi=110)
        plt.close(figure)
