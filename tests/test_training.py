"""`registry train`, `reembed`, `models export|install`, `vectors prune` on the tiny-test profile: real
training steps (sub-center ArcFace, pytorch-metric-learning), real Qdrant collections, real SQL, a killed reembed."""

from __future__ import annotations

import json
import shutil
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from registry.ingest.ingestion import Ingestor
from registry.learning.trainer import TrainItem, open_set_validation, split_identities
from registry.services.registry import Registry
from registry.services.training import flank_specific
from registry.settings import Settings

RECIPE = ["--epochs", "2", "--input-size", "64", "--batch-size", "8"]
pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM.*:UserWarning")


def _registry_with_references(home: Path, population: Path) -> None:
    Registry.init(Settings.for_profile("tiny-test", data_dir=home, batch_size=4))
    with Registry(Settings.load(home)) as registry:
        Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")


def _state(home: Path) -> dict:
    with Registry(Settings.load(home)) as registry:
        policy = registry.policy
        primary = registry.pipeline.primary
        collections = dict(registry.collections)
        return {"policy": policy, "primary_sha": primary.weights_sha256, "collections": collections,
                "counts": {c: registry.index.count(c) for c in registry.index.collections()},
                "models": registry.embedder_versions.list()}


@pytest.fixture(scope="module")
def trained_site(tmp_path_factory: pytest.TempPathFactory, population: Path) -> tuple[Path, dict, dict]:
    """A registry with season 1's references and one `registry train` run (not in force), made once per module:
    (its folder, train's report, the registry's state before training). Tests work on copies."""
    home = tmp_path_factory.mktemp("trained") / "site"
    _registry_with_references(home, population)
    before = _state(home)
    trained = json.loads(run_cli(home, "--json", "train", *RECIPE).stdout)["trained"]
    return home, trained, before


def _copy_of(site: tuple[Path, dict, dict], target: Path) -> tuple[Path, dict, dict]:
    """A private copy of the trained site, its report's paths pointing into the copy."""
    home, trained, before = site
    shutil.copytree(home, target)
    moved = json.loads(json.dumps(trained).replace(str(home.resolve()), str(target.resolve())))
    return target, moved, before


def test_train_then_reembed_switches_the_policy_and_queries_search_the_new_collection(
        tmp_path: Path, population: Path, trained_site: tuple[Path, dict, dict]) -> None:
    home, trained, before = _copy_of(trained_site, tmp_path / "reg")
    checkpoint = Path(trained["checkpoint"])
    assert all(checkpoint.with_suffix(ext).is_file() for ext in (".safetensors", ".json", ".png"))
    assert trained["parent"]["weights_sha256"] == before["primary_sha"]
    assert trained["training_set"]["train_photos"] == 12 and len(trained["history"]) >= 2

    after_train = _state(home)  # registered, not in force: nothing changed for identification
    assert after_train["policy"].version == before["policy"].version
    assert after_train["collections"] == before["collections"]
    row = next(m for m in after_train["models"] if m["version"] == trained["version"])
    assert row["trained"] and not row["in_force"] and row["parent"] is not None

    result = json.loads(run_cli(home, "--json", "reembed").stdout)
    assert result["annotations"] == 12 and result["reembedded"] == 12
    switched = _state(home)
    policy = switched["policy"]
    assert policy.version > before["policy"].version and policy.calibration_batches
    assert policy.embedder_weights == {trained["name"]: str(checkpoint.relative_to(home.resolve()))}
    assert switched["primary_sha"] == trained["weights_sha256"]  # a reopened registry loads the trained weights
    new_collection = switched["collections"][trained["name"]]
    assert new_collection != before["collections"][trained["name"]] and switched["counts"][new_collection] == 12

    season2 = population / "season2" / "manifest.csv"
    photo = population / "season2" / next(iter(_manifest_images(season2)))
    answer = json.loads(run_cli(home, "--json", "identify", str(photo), "--record", "--survey", "s2").stdout)
    assert answer[0]["policy_version"] == policy.version
    final = _state(home)
    assert final["counts"][new_collection] == 13  # the new photo went into the collection in force
    assert final["counts"][before["collections"][trained["name"]]] == 12  # the old one stays until pruned

    pruned = json.loads(run_cli(home, "--json", "vectors", "prune").stdout)
    assert [p["collection"] for p in pruned] == [before["collections"][trained["name"]]]
    left = _state(home)
    assert before["collections"][trained["name"]] not in left["counts"] and left["counts"][new_collection] == 13
    assert json.loads(run_cli(home, "--json", "doctor").stdout)["consistent"]


def _manifest_images(manifest: Path) -> list[str]:
    import csv

    with open(manifest) as f:
        return [r["image"] for r in csv.DictReader(f)]


def test_a_killed_reembed_resumes_and_ends_where_an_uninterrupted_one_does(
        tmp_path: Path, trained_site: tuple[Path, dict, dict]) -> None:
    home, _, _ = _copy_of(trained_site, tmp_path / "reg")
    before = _state(home)
    killed = run_cli(home, "reembed", env={"REGISTRY_CRASH_AT": "reembed-batch:2"}, expect=None)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stopped = _state(home)
    assert stopped["policy"].version == before["policy"].version  # no switch: the old version still decides
    assert stopped["collections"] == before["collections"]
    doctor = json.loads(run_cli(home, "--json", "doctor").stdout)
    assert doctor["consistent"]
    assert [(r["vectors"], r["annotations"]) for r in doctor["unfinished_reembeds"]] == [(8, 12)]
    text = run_cli(home, "doctor").stdout
    assert "unfinished reembed" in text and "registry reembed --model" in text

    resumed = json.loads(run_cli(home, "--json", "reembed").stdout)
    assert resumed["reembedded"] == 4 and resumed["annotations"] == 12  # only what the killed run had not written
    done = _state(home)
    assert done["policy"].embedder_weights and done["counts"][resumed["collection"]] == 12
    assert json.loads(run_cli(home, "--json", "doctor").stdout)["unfinished_reembeds"] == []


def test_a_trained_model_is_exported_and_installed_into_another_registry(
        tmp_path: Path, population: Path, trained_site: tuple[Path, dict, dict]) -> None:
    home, trained, _ = _copy_of(trained_site, tmp_path / "site-a")
    other = tmp_path / "site-b"
    exported = run_cli(home, "--json", "models", "export", str(tmp_path / "model.zip")).stdout
    archive = Path(json.loads(exported)["exported"])
    assert archive.is_file()

    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(damaged, "w") as out:
        for name in source.namelist():
            data = source.read(name)
            out.writestr(name, data[:-100] + bytes(100) if name.endswith(".safetensors") else data)
    _registry_with_references(other, population)
    refused = run_cli(other, "models", "install", str(damaged), expect=1)
    assert "sha256" in refused.stderr
    not_a_model = tmp_path / "notes.zip"
    not_a_model.write_text("not a zip")
    assert "not a model archive" in run_cli(other, "models", "install", str(not_a_model), expect=1).stderr

    installed = json.loads(run_cli(other, "--json", "models", "install", str(archive)).stdout)
    assert installed["version"] == trained["version"]
    run_cli(other, "reembed")
    state = _state(other)
    assert state["primary_sha"] == trained["weights_sha256"] and state["policy"].embedder_weights


def test_flank_specific_species_train_per_flank_and_never_mirror(tmp_path: Path) -> None:
    assert flank_specific({"left", "right", None}) and not flank_specific({None}) and not flank_specific({"left"})
    rng = np.random.default_rng(0)
    items = [TrainItem(Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)), f"n/{k // 3}", "n")
             for k in range(30)]
    train, validation = split_identities(items, 0.2, seed=0)
    assert set(train).isdisjoint(validation) and len(validation) == 9  # three held-out identities (the minimum)
    assert {items[i].label for i in train}.isdisjoint({items[i].label for i in validation})

    vectors = np.eye(6, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]
    perfect = open_set_validation(vectors, ["a", "a", "b", "b", "c", "c"], seed=0)
    assert perfect["score"] == pytest.approx(1.0) and perfect["top1"] == 1.0
    confused = open_set_validation(np.ones((6, 6), np.float32) / np.sqrt(6), ["a", "a", "b", "b", "c", "c"], seed=0)
    assert confused["score"] < perfect["score"]
