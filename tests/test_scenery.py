"""A fixed camera's scenery never votes (issue 24 §1): keypoints that recur at the same place in one camera's
photos of different animals are found and masked, the animals' own keypoints are not, and the registry applies
the mask to whole photos of a deployment (never to boxes) when the setting is on."""

from __future__ import annotations

import csv
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from sqlalchemy import select

from registry.evaluate import synth
from registry.ingest.ingestion import Ingestor
from registry.interfaces.cli.main import main
from registry.matching.local_matcher import AlikedLightGlue, mutual_nearest_matches
from registry.matching.scenery import find_scenery
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.tables import WHOLE_IMAGE, Annotation, Deployment, Image, Sighting


def _animal(name: str, rng: np.random.Generator):
    return synth.render_coat(synth.make_coat(name, rng))


@pytest.fixture(scope="module")
def matcher() -> AlikedLightGlue:
    """ALIKED at the registry's default budget (the suite's quarter budget finds mostly the coats' keypoints)."""
    return AlikedLightGlue(max_keypoints=1024, engine="mnn")


@pytest.fixture(scope="module")
def station(matcher: AlikedLightGlue):
    """Seven animals photographed twice each by one fixed camera, plus the eighth animal's photo in front of that
    camera and in front of scenery of its own."""
    rng = np.random.default_rng(5)
    view = synth.random_scenery(np.random.default_rng(99))  # the fixed camera's scenery
    animals = [_animal(f"ind_{k}", rng) for k in range(8)]
    photos, owners = [], []
    for k, texture in enumerate(animals[:7]):
        for _ in range(2):
            photos.append(synth.photograph(texture, rng, scenery=view))
            owners.append(k)
    extract = matcher.extract
    return {
        "photos": extract(photos),
        "owners": owners,
        "at_station": extract([synth.photograph(animals[7], rng, scenery=view)])[0],
        "elsewhere": extract([synth.photograph(animals[7], rng)])[0],
        "neighbour": extract([synth.photograph(animals[0], rng, scenery=view)])[0],
    }


def test_a_fixed_cameras_scenery_is_found_and_masked_and_the_animal_is_not(station) -> None:
    scenery = find_scenery(station["photos"], station["owners"])
    assert len(scenery) > 1000, "the station's rocks and stems recur in every animal's photos"

    at_station = scenery.on_scenery(station["at_station"]).mean()
    elsewhere = scenery.on_scenery(station["elsewhere"]).mean()
    assert at_station > 0.15, f"a new animal's photo at the station keeps its scenery ({at_station:.2f} masked)"
    assert elsewhere < 0.05, f"the same animal elsewhere loses its own keypoints ({elsewhere:.2f} masked)"

    # what the mask is for: two different animals at one station stop matching on the scenery they share
    before = mutual_nearest_matches(station["at_station"], [station["neighbour"]], 0.9)[0].count(0.0)
    after = mutual_nearest_matches(scenery.mask(station["at_station"]), [scenery.mask(station["neighbour"])],
                                   0.9)[0].count(0.0)
    assert after < 0.75 * before, f"two animals still match on the scenery: {before} -> {after} correspondences"


def test_too_few_animals_or_changing_scenery_find_no_scenery(station, matcher: AlikedLightGlue) -> None:
    one_animal = [k for k, owner in enumerate(station["owners"]) if owner in (0, 1)]
    assert len(find_scenery([station["photos"][k] for k in one_animal],
                            [station["owners"][k] for k in one_animal])) == 0, \
        "two animals cannot tell scenery from a coat pattern they happen to share"
    rng = np.random.default_rng(8)
    moving = matcher.extract([synth.photograph(_animal(f"x{k}", rng), rng) for k in range(8)])
    chance = len(find_scenery(moving, list(range(8)))) / sum(len(f) for f in moving)
    assert chance < 0.02, f"every photo had scenery of its own, yet {chance:.3f} of the keypoints were flagged"


def test_the_registry_masks_whole_photos_of_a_deployment_and_never_a_box(tmp_path: Path) -> None:
    synth.generate(tmp_path / "pop", individuals=14, seasons=1, seed=4, camera_traps=True, fixed_scenery=True,
                   photos_per_sighting=(2, 2))
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")
    settings.local = replace(settings.local, engine="mnn", static_scenery=True, max_keypoints=1024)
    Registry.init(settings)
    with Registry(Settings.load(settings.data_dir)) as registry:  # its own pipeline: the setting is in its version
        Ingestor(registry).ingest(tmp_path / "pop" / "season1" / "manifest.csv", "s1", "reference")
        assert registry.pipeline.local.version.endswith("-scenery"), "calibrations must not outlive the setting"
        with registry.catalog.transaction() as session:
            rows = session.execute(
                select(Annotation.id, Annotation.region, Deployment.code)
                .join(Image, Image.id == Annotation.image_id)
                .join(Deployment, Deployment.id == Image.deployment_id)).all()
        whole = [(i, code) for i, region, code in rows if region == WHOLE_IMAGE]
        boxed = [i for i, region, _ in rows if region != WHOLE_IMAGE]
        assert whole and boxed, "the season has lone animals (whole photos) and groups (boxes)"
        identifier = registry.identification
        masked = identifier.candidate_features([i for i, _ in whole] + boxed)
        plain = identifier.candidate_features([i for i, _ in whole] + boxed, scenery=False)
        for annotation_id in boxed:
            assert len(masked[annotation_id]) == len(plain[annotation_id]), "a box is a crop: never masked"
        lost = [1 - len(masked[i]) / len(plain[i]) for i, _ in whole]
        busiest = max({code for _, code in whole}, key=lambda c: sum(code == c for _, code in whole))
        assert len(identifier.scenery_of(busiest)) > 0, f"{busiest}: no scenery found"
        assert max(lost) > 0.1, f"no whole photo lost its station's scenery (largest share {max(lost):.2f})"

        # a query from a camera the registry does not know yet (a new season's deployment) loses its keypoints on
        # the scenery of the shortlisted photos' cameras: scored as if its camera were known, and it matches other
        # animals at the station less (measured here: 179 -> 160 correspondences; their photos were masked already)
        at_busiest = [i for i, code in whole if code == busiest]
        with registry.catalog.transaction() as session:
            owner = dict(session.execute(select(Sighting.annotation_id, Sighting.individual_id)
                                         .where(Sighting.status == "active")).all())
            query_id = max(at_busiest, key=lambda i: lost[[w for w, _ in whole].index(i)])
            path, species = session.execute(select(Image.path, Annotation.species).join(
                Annotation, Annotation.image_id == Image.id).where(Annotation.id == query_id)).one()
        described = identifier.describe([Path(path)], [species], [None])[0]

        def scores(**where: object) -> dict[int, float]:
            found = identifier.candidates(described, species, None, exclude=(query_id,), **where)
            return {c.annotation_id: c.raw[registry.pipeline.local.name] for c in found}

        unknown_camera, known_camera = scores(deployment=None), scores(deployment=busiest)
        unmasked = scores(whole_photo=False)
        assert unknown_camera == known_camera
        strangers = [i for i in unknown_camera if i in at_busiest and owner[i] != owner[query_id]]
        assert strangers, "the shortlist holds other animals photographed at the query's station"
        kept = identifier.without_scenery(described.local, identifier.deployments_of(list(unknown_camera)))
        assert len(kept) < 0.9 * len(described.local), "the query kept its keypoints on the station's scenery"
        assert sum(unknown_camera[i] for i in strangers) < sum(unmasked[i] for i in strangers), \
            "the query matches other animals at its station as much as before its scenery was masked"


def test_synth_makes_fixed_stations_only_for_camera_traps(tmp_path: Path) -> None:
    refused = CliRunner().invoke(main, ["synth", str(tmp_path / "x"), "--fixed-scenery"])
    assert refused.exit_code != 0 and "--camera-traps" in refused.output
    assert not (tmp_path / "x").exists()
    made = CliRunner().invoke(main, ["--json", "synth", str(tmp_path / "traps"), "--camera-traps", "--fixed-scenery",
                                     "--individuals", "4", "--seasons", "1", "--seed", "2"])
    assert made.exit_code == 0, made.output
    with open(tmp_path / "traps" / "season1" / "manifest.csv", newline="") as f:
        lone = [r for r in csv.DictReader(f) if not r["bbox_w"]]
    def corners(row: dict[str, str]) -> np.ndarray:
        """The four corners (beside the animal) of a photo, its coarse lighting removed."""
        photo = PILImage.open(tmp_path / "traps" / "season1" / row["image"]).convert("L")
        pixels = np.asarray(photo, dtype=float)
        pixels -= np.asarray(photo.resize((32, 24)).resize(photo.size), dtype=float)
        return np.concatenate([pixels[:40, :60].ravel(), pixels[:40, -60:].ravel(), pixels[-40:, :60].ravel(),
                               pixels[-40:, -60:].ravel()])

    seen = [(row["deployment"], corners(row)) for row in lone]
    # a station's photos share their scenery; two stations' photos do not
    within = [np.corrcoef(a, b)[0, 1] for (s, a), (t, b) in combinations(seen, 2) if s == t]
    across = [np.corrcoef(a, b)[0, 1] for (s, a), (t, b) in combinations(seen, 2) if s != t]
    assert within and across, "the season has several photos at one station and photos at several stations"
    assert np.median(within) > 0.5 and abs(np.median(across)) < 0.2, (np.median(within), np.median(across))
