"""Fine-tune a global embedder on labelled photos with sub-center ArcFace (pytorch-metric-learning).

Identities are split: most train, a held-out few validate. After every epoch the held-out photos play an
open-set test (gallery = the earlier half of each validation identity's photos, queries = the rest plus every
photo of validation identities left out of the gallery; 1-NN cosine, tau chosen on the same queries), and the
epoch with the best open-set score is kept (early stopping). Horizontal flips are used only where a species'
pattern is symmetric (never for flank-specific species: a nyala's left flank mirrored is not its right flank).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from registry.decide.metrics import Prediction, evaluate
from registry.matching.embedders import TorchEmbedder, autocast_dtype, letterbox


@dataclass
class TrainSettings:
    """The recipe; defaults measured on the dev sets (docs/accuracy.md)."""

    epochs: int = 12
    batch_size: int = 32
    input_size: int = 288  # square, the photo letterboxed into it (aspect ratio kept)
    learning_rate: float = 1e-4  # backbone
    head_learning_rate: float = 1e-2  # the ArcFace class centres
    weight_decay: float = 1e-4
    loss: str = "subcenter-arcface"  # or "arcface"
    margin_degrees: float = 20.0
    scale: float = 32.0
    sub_centers: int = 3
    validation_fraction: float = 0.2  # of the identities with at least two photos
    patience: int = 4  # epochs without a better validation score before stopping
    seed: int = 0
    max_minutes: float | None = None  # stop after this long (the best epoch so far is kept)
    flips: list[str] = field(default_factory=list)  # species whose pattern may be mirrored

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainItem:
    """One labelled photo: decoded image, class (individual, or individual x flank) and its species."""

    image: Image.Image
    label: str
    species: str


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    validation: dict[str, Any]
    classes: int
    train_photos: int
    validation_photos: int
    seconds: float


class TrainingError(ValueError):
    pass


def split_identities(items: list[TrainItem], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation photos; validation identities never train."""
    by_label: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_label.setdefault(item.label, []).append(index)
    eligible = sorted(label for label, photos in by_label.items() if len(photos) >= 2)
    rng = np.random.default_rng(seed)
    n_val = max(3, round(len(eligible) * fraction)) if len(eligible) >= 8 else 0
    held_out = set(rng.permutation(eligible)[:n_val].tolist())
    train = [i for label, photos in by_label.items() if label not in held_out for i in photos]
    validation = [i for label in sorted(held_out) for i in by_label[label]]
    return sorted(train), validation


def open_set_validation(vectors: np.ndarray, labels: list[str], seed: int) -> dict[str, Any]:
    """Score of a 1-NN open-set test on held-out identities (a third of them unknown), tau chosen on it."""
    rng = np.random.default_rng(seed)
    names = sorted(set(labels))
    unknown = set(rng.permutation(names)[: max(1, len(names) // 3)].tolist())
    gallery, queries = [], []
    for name in names:
        photos = [i for i, label in enumerate(labels) if label == name]
        if name in unknown:
            queries += photos
        else:
            cut = max(1, len(photos) // 2)
            gallery += photos[:cut]
            queries += photos[cut:]
    if not gallery or not queries:
        return {"score": None, "top1": None}
    similarity = vectors[queries] @ vectors[gallery].T
    best = similarity.argmax(axis=1)
    top = [(labels[gallery[b]], float(similarity[row, b])) for row, b in enumerate(best)]
    known_hits = [labels[q] == t for q, (t, _) in zip(queries, top, strict=True) if labels[q] not in unknown]
    best_score, best_tau = -1.0, 0.0
    for tau in np.unique(np.round([s for _, s in top], 3)):
        found = evaluate([Prediction("", labels[q], labels[q] not in unknown, t if s >= tau else None)
                          for q, (t, s) in zip(queries, top, strict=True)])["overall"]
        if found["score"] is not None and found["score"] > best_score:
            best_score, best_tau = float(found["score"]), float(tau)
    return {"score": best_score, "tau": best_tau, "top1": float(np.mean(known_hits)) if known_hits else None,
            "queries": len(queries), "identities": len(names)}


class Trainer:
    """Fine-tunes a copy of an embedder's network; the embedder given is left as it was."""

    def __init__(self, parent: TorchEmbedder, settings: TrainSettings, device: str = "cpu",
                 say: Callable[[str], None] = lambda _m: None) -> None:
        self.parent = parent
        self.settings = settings
        self.device = torch.device(device)
        self.say = say
        self.mean = torch.tensor(parent.preprocessing.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(parent.preprocessing.std, dtype=torch.float32).view(3, 1, 1)

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        """Letterboxed and resized once (uint8), so every epoch only augments."""
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float().div_(255.0)
        pixels = letterbox(pixels, self.mean)
        size = self.settings.input_size
        pixels = torch.nn.functional.interpolate(pixels[None], size=(size, size), mode="bicubic", antialias=True,
                                                 align_corners=False)[0]
        return (pixels.clamp(0, 1) * 255).round().to(torch.uint8)

    def _augment(self, flip: bool) -> v2.Compose:
        size = self.settings.input_size
        steps: list[Any] = [
            v2.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomAffine(degrees=6),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.02),
        ]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)

    def _normalise(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() / 255.0 - self.mean.to(batch.device)) / self.std.to(batch.device)

    @torch.no_grad()
    def _embed(self, model: torch.nn.Module, pixels: list[torch.Tensor]) -> np.ndarray:
        model.eval()
        out = []
        dtype = autocast_dtype(self.device, "auto")
        for start in range(0, len(pixels), 32):
            batch = self._normalise(torch.stack(pixels[start : start + 32]).to(self.device))
            with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                features = model(batch)
            out.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
        model.train()
        return np.concatenate(out) if out else np.zeros((0, self.parent.dimension), np.float32)

    def fit(self, items: list[TrainItem]) -> TrainResult:
        from pytorch_metric_learning import losses

        settings = self.settings
        began = time.perf_counter()
        torch.manual_seed(settings.seed)
        train, validation = split_identities(items, settings.validation_fraction, settings.seed)
        labels = sorted({items[i].label for i in train})
        if len(labels) < 2:
            raise TrainingError(f"{len(labels)} labelled individual(s) to train on: at least two are needed")
        class_of = {label: k for k, label in enumerate(labels)}
        self.say(f"training on {len(train)} photos of {len(labels)} classes, validating on {len(validation)} "
                 f"photos of {len({items[i].label for i in validation})} held-out identities")
        pixels = [self._pixels(item.image) for item in items]
        targets = torch.tensor([class_of.get(item.label, -1) for item in items])
        augment = {sp: self._augment(sp in settings.flips) for sp in {item.species for item in items}}
        torch.set_grad_enabled(True)
        model = copy.deepcopy(self.parent.model).to(self.device).train()
        dimension = self.parent.dimension
        if settings.loss == "arcface":
            loss_fn = losses.ArcFaceLoss(num_classes=len(labels), embedding_size=dimension,
                                         margin=settings.margin_degrees, scale=settings.scale)
        elif settings.loss == "subcenter-arcface":
            loss_fn = losses.SubCenterArcFaceLoss(num_classes=len(labels), embedding_size=dimension,
                                                  margin=settings.margin_degrees,
                                                  scale=settings.scale, sub_centers=settings.sub_centers)
        else:
            raise TrainingError(f"unknown loss {settings.loss!r} (arcface, subcenter-arcface)")
        loss_fn = loss_fn.to(self.device)
        optimiser = torch.optim.AdamW([
            {"params": model.parameters(), "lr": settings.learning_rate},
            {"params": loss_fn.parameters(), "lr": settings.head_learning_rate, "weight_decay": 0.0},
        ], weight_decay=settings.weight_decay)
        steps_per_epoch = max(1, math.ceil(len(train) / settings.batch_size))
        total = steps_per_epoch * settings.epochs
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=[settings.learning_rate, settings.head_learning_rate], total_steps=total,
            pct_start=0.1, anneal_strategy="cos")
        dtype = autocast_dtype(self.device, "auto")
        rng = np.random.default_rng(settings.seed)
        val_labels = [items[i].label for i in validation]
        history: list[dict[str, float]] = []

        def validate() -> dict[str, Any]:
            if not validation:
                return {"score": None, "top1": None}
            vectors = self._embed(model, [pixels[i] for i in validation])
            return open_set_validation(vectors, val_labels, settings.seed)

        start = validate()
        self.say(f"before training: validation score {start['score']}, top-1 {start['top1']}")
        best_state, best_epoch, best_key, stale = copy.deepcopy(model.state_dict()), 0, (-1.0, -1.0), 0
        if start["score"] is not None:
            best_key = (start["score"], start["top1"] or 0.0)
        history.append({"epoch": 0, "loss": float("nan"), "val_score": start["score"] or 0.0,
                        "val_top1": start["top1"] or 0.0})
        for epoch in range(1, settings.epochs + 1):
            order = rng.permutation(train)
            running = []
            for step in range(steps_per_epoch):
                chosen = order[step * settings.batch_size : (step + 1) * settings.batch_size]
                if len(chosen) < 2:
                    continue
                batch = torch.stack([augment[items[i].species](pixels[i]) for i in chosen]).to(self.device)
                with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    features = model(self._normalise(batch))
                loss = loss_fn(features.float(), targets[chosen].to(self.device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                running.append(float(loss.detach()))
            found = validate()
            record = {"epoch": epoch, "loss": float(np.mean(running)) if running else float("nan"),
                      "val_score": found["score"] or 0.0, "val_top1": found["top1"] or 0.0}
            history.append(record)
            self.say(f"epoch {epoch}/{settings.epochs}: loss {record['loss']:.3f}, validation score "
                     f"{record['val_score']:.3f}, top-1 {record['val_top1']:.3f}")
            key = (found["score"] or 0.0, found["top1"] or 0.0)
            if not validation or key > best_key:
                best_state, best_epoch, best_key, stale = copy.deepcopy(model.state_dict()), epoch, key, 0
            else:
                stale += 1
            minutes = (time.perf_counter() - began) / 60
            if stale >= settings.patience or (settings.max_minutes and minutes >= settings.max_minutes):
                self.say(f"stopping after epoch {epoch} (best epoch {best_epoch})")
                break
        model.load_state_dict(best_state)
        model.eval()
        torch.set_grad_enabled(False)
        best = next(h for h in history if h["epoch"] == best_epoch)
        return TrainResult(model=model, history=history, best_epoch=best_epoch,
                           validation={"before": start, "best": best, "held_out_identities": len(set(val_labels))},
                           classes=len(labels), train_photos=len(train), validation_photos=len(validation),
                           seconds=time.perf_counter() - began)
