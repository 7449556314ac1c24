"""Discover: a season's new animals decided together (`registry discover`, `ingest --mode discover`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import rows_of, run_cli, snapshot
from sklearn.metrics import adjusted_rand_score
from sqlalchemy import select

from registry.curation.discovery import average_linkage, cluster, mutual_neighbours
from registry.evaluate import synth
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import Catalog
from registry.store.tables import Annotation, Image, Individual, Sighting


def test_average_linkage_merges_what_scores_above_the_cut() -> None:
    similarity = np.full((5, 5), 0.1)
    similarity[np.ix_([0, 1, 2], [0, 1, 2])] = 0.9
    similarity[np.ix_([3, 4], [3, 4])] = 0.7
    similarity[0, 2] = similarity[2, 0] = 0.3  # a weak link inside the first animal: the average carries it

    def groups(cut: float) -> set[frozenset[int]]:
        labels = average_linkage(similarity, cut)
        return {frozenset(i for i, label in enumerate(labels) if label == group) for group in set(labels)}

    assert groups(0.5) == {frozenset({0, 1, 2}), frozenset({3, 4})}
    assert groups(0.8) == {frozenset({0, 1}), frozenset({2}), frozenset({3}), frozenset({4})}  # 2 joins at 0.6
    assert groups(0.95) == {frozenset({i}) for i in range(5)}
    assert groups(0.05) == {frozenset(range(5))}
    assert average_linkage(np.zeros((1, 1)), 0.5) == [0]


def test_mutual_neighbours_keep_only_pairs_that_rank_each_other_first() -> None:
    """Three strangers from one camera score 0.6 with everyone (the scenery); each animal's two photos 0.9 with
    each other. Averages over every pair chain them all at a cut of 0.55; mutual first neighbours do not."""
    similarity = np.full((6, 6), 0.6)
    for a, b in ((0, 1), (2, 3), (4, 5)):
        similarity[a, b] = similarity[b, a] = 0.9
    np.fill_diagonal(similarity, 1.0)
    kept = mutual_neighbours(similarity, 1)
    assert {(i, j) for i, j in zip(*np.nonzero(kept), strict=True) if i < j} == {(0, 1), (2, 3), (4, 5)}
    assert len(set(cluster(similarity, "average", 0.55))) == 1
    assert len(set(cluster(similarity, "mutual-1", 0.55))) == 3
    assert len(set(cluster(similarity, "mutual-2", 0.55))) <= 3


@pytest.fixture(scope="module")
def new_animals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Season 2 brings four animals never seen in season 1, three photos each, hours apart (separate events)."""
    root = tmp_path_factory.mktemp("discovery")
    synth.generate(root, individuals=6, seasons=2, seed=11, photos_per_sighting=(3, 3), return_rate=0.5,
                   new_per_season=0.67)
    return root


def _partition(data: Path, manifest: Path) -> tuple[list[str], list[str]]:
    """(true identity, individual code in the registry) of each photo of the manifest's animals that season 1 did
    not have."""
    rows = rows_of(manifest)
    catalog = Catalog(Settings.load(data).sqlalchemy_url)
    with catalog.transaction() as session:
        recorded = dict(session.execute(
            select(Image.path, Individual.code).join(Annotation, Annotation.image_id == Image.id)
            .join(Sighting, Sighting.annotation_id == Annotation.id)
            .join(Individual, Individual.id == Sighting.individual_id).where(Sighting.status == "active")).all())
    catalog.close()
    truth, found = [], []
    for row in rows:
        path = str((manifest.parent / row["image"]).resolve())
        code = next((c for p, c in recorded.items() if Path(p).resolve() == Path(path)), None)
        if code is not None:
            truth.append(row["identity"])
            found.append(code)
    return truth, found


@pytest.fixture(scope="module")
def cautious_season(tmp_path_factory: pytest.TempPathFactory, new_animals: Path) -> Path:
    """Season 1 labelled and calibrated; a cautious policy (tau 0.999) then called every season-2 photo a new
    animal, one photo at a time. Tests work on copies."""
    data = tmp_path_factory.mktemp("cautious") / "registry"
    run_cli(data, "init", "--no-download", "--engine", "mnn")
    run_cli(data, "ingest", str(new_animals / "season1" / "manifest.csv"), "--survey", "s1")
    run_cli(data, "calibrate", "--pairs", "30")
    policy = run_cli(data, "policy", "show").stdout  # what self-tuning expects of tau, with its interval
    assert "synleopard: tau" in policy and "expected score" in policy and "[95 %" in policy
    with Registry(Settings.load(data)) as registry:
        registry.set_policy(registry.policy.derive("a cautious season", "test", thresholds={"synleopard": 0.999}))
    run_cli(data, "ingest", str(new_animals / "season2" / "manifest.csv"), "--survey", "s2", "--mode", "identify")
    return data


def _copy(registry: Path, tmp_path: Path) -> Path:
    import shutil

    data = tmp_path / "registry"
    shutil.copytree(registry, data)
    settings = json.loads((data / "settings.json").read_text())
    if str(registry) in json.dumps(settings):  # paths inside the registry follow the copy
        (data / "settings.json").write_text(json.dumps(settings).replace(str(registry), str(data)))
    return data


def test_discover_decides_a_seasons_new_animals_together_and_each_merge_is_undoable(
        tmp_path: Path, new_animals: Path, cautious_season: Path) -> None:
    """Discovery groups the photos of each animal a cautious policy split, scored by the calibrated matchers, cut
    where the labelled season 1 says. Known animals' photos are provisional too here (nobody vouched for them):
    they are grouped, not merged into season 1's individuals."""
    data = _copy(cautious_season, tmp_path)
    season2 = new_animals / "season2" / "manifest.csv"
    truth, before = _partition(data, season2)
    assert len(set(before)) > len(set(truth))  # one photo at a time, animals were split

    proposed = json.loads(run_cli(data, "--json", "discover", "--survey", "s2").stdout)
    assert _partition(data, season2)[1] == before  # proposals only: nothing changed
    cut = proposed["species"]["synleopard"]["cut"]
    assert cut["cut"] is not None and 0 < cut["cut"] < 1 and cut["photos"] >= 6  # chosen on the labelled photos
    assert proposed["proposals"] and all(set(p["individuals"]) <= set(before) for p in proposed["proposals"])

    applied = json.loads(run_cli(data, "--json", "discover", "--survey", "s2", "--apply").stdout)
    _, after = _partition(data, season2)
    ari_before, ari_after = adjusted_rand_score(truth, before), adjusted_rand_score(truth, after)
    print(f"ARI of season 2: {ari_before:.3f} one photo at a time, {ari_after:.3f} discovered "
          f"({len(set(after))} individuals for {len(set(truth))} animals)")
    assert ari_after >= 0.8 > ari_before
    assert len(applied["applied"]) == sum(len(p["individuals"]) - 1 for p in applied["proposals"])
    season1 = {r["identity"] for r in rows_of(new_animals / "season1" / "manifest.csv")}
    assert len(set(_partition(data, new_animals / "season1" / "manifest.csv")[1])) == len(season1)  # untouched
    again = json.loads(run_cli(data, "--json", "discover", "--survey", "s2").stdout)
    assert again["proposals"] == []  # nothing left to group

    last = applied["applied"][-1]  # a discovered merge is a curation like any other: undone, its animal is back
    run_cli(data, "undo", str(last["change"]))
    _, undone = _partition(data, season2)
    assert last["absorbed"] in undone and len(set(undone)) == len(set(after)) + 1


def test_the_workspace_reviews_discovered_animals_as_groups(tmp_path: Path, new_animals: Path,
                                                           cautious_season: Path) -> None:
    """Discovery runs on the server as a job; a proposal is accepted with one photo split off (that individual
    stays as it was), another merged into a known animal; each merge is an audited change."""
    import time

    from fastapi.testclient import TestClient

    from registry.curation.curator import Curator
    from registry.interfaces import tokens
    from registry.interfaces.api import create_app
    from registry.interfaces.web import background, sessions

    data = _copy(cautious_season, tmp_path)
    settings = Settings.load(data)
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service
        key = sessions.sign_in(service.reads, tokens.create(service.reads, "curator", "admin"))
        client.cookies.set(sessions.COOKIE, key)
        csrf = sessions.browser(service.reads, key).csrf
        page = client.get("/ui/discover", params={"survey": "s2"})
        assert page.status_code == 200 and "Find new animals in s2" in page.text
        assert client.get("/ui/discover", params={"survey": "nope"}).status_code == 404
        started = client.post("/ui/discover/run", data={"csrf": csrf, "survey": "s2"}, follow_redirects=False)
        assert started.status_code == 303
        for _ in range(600):
            job = background.latest(service, "discover")
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.5)
        assert job["status"] == "done", job
        report = json.loads((data / "reports" / "discover-s2.json").read_text())
        proposals = [p for p in report["proposals"] if len(p["individuals"]) >= 3]
        assert proposals, "a season of animals photographed three times has proposals of three"
        page = client.get("/ui/discover", params={"survey": "s2"})
        assert all(f'value="{code}"' in page.text for p in report["proposals"] for code in p["individuals"])

        first = proposals[0]["individuals"]
        kept, split_off = first[:-1], first[-1]
        accepted = client.post("/ui/discover/accept", data={"csrf": csrf, "survey": "s2", "individual": kept})
        assert accepted.status_code == 200 and f"{len(kept) - 1} merged into {kept[0]}" in accepted.text
        now = {code: service.reads.history(code)["individual"] for code in first}
        assert {now[c] for c in kept} == {kept[0]} and now[split_off] == split_off
        known = service.reads.individuals()[0]["code"]
        others = [p for p in report["proposals"] if p["individuals"] != first]
        if others:
            second = others[0]["individuals"]
            merged = client.post("/ui/discover/accept",
                                 data={"csrf": csrf, "survey": "s2", "individual": second, "into": known})
            assert f"{len(second)} merged into {known}" in merged.text
            assert {service.reads.history(c)["individual"] for c in second} == {known}
        refused = client.post("/ui/discover/accept", data={"csrf": csrf, "survey": "s2", "individual": [kept[0]]})
        assert "tick at least two photos" in refused.text
        merges = [c for c in Curator.changes_in(service.reads, 100) if c["kind"] == "merge"]
        assert len(merges) == len(kept) - 1 + (len(others[0]["individuals"]) if others else 0)


def test_discover_refuses_an_unknown_survey_and_an_uncalibrated_registry_and_changes_nothing(
        tmp_path: Path, new_animals: Path) -> None:
    data = tmp_path / "registry"
    run_cli(data, "init", "--no-download", "--profile", "tiny-test")
    run_cli(data, "ingest", str(new_animals / "season1" / "manifest.csv"), "--survey", "s1")
    refused = run_cli(data, "discover", "--survey", "no-such-season", expect=None)
    assert refused.returncode != 0 and "no survey named 'no-such-season'" in refused.stderr
    quiet = json.loads(run_cli(data, "--json", "discover", "--survey", "s1").stdout)
    assert quiet["proposals"] == [] and quiet["applied"] == []  # reference animals are never provisional
    ingested = json.loads(run_cli(data, "--json", "ingest", str(new_animals / "season2" / "manifest.csv"),
                                  "--survey", "s2", "--mode", "discover").stdout)
    assert ingested["added"] == len(rows_of(new_animals / "season2" / "manifest.csv"))  # the season is recorded
    assert "not calibrated" in ingested["not_discovered"]  # and discovery says why it did not run
    before = snapshot(data)
    uncalibrated = run_cli(data, "discover", "--survey", "s2", "--apply", expect=None)
    assert uncalibrated.returncode != 0 and "not calibrated" in uncalibrated.stderr  # raw counts are no probability
    assert snapshot(data) == before


def test_labelled_photos_are_sampled_whole_visits_at_a_time() -> None:
    """A season brings an unknown animal as bursts or clips; the labelled sample the cut is chosen on comes the
    same way: whole visits (an event, else a shared capture time, else the photo alone) until the budget."""
    from datetime import datetime

    from registry.curation.discovery import visit_of, whole_visits

    clip = datetime(2025, 4, 1, 9, 32, 14)
    photos = ([{"annotation_id": k, "event_id": 7, "captured_at": datetime(2025, 4, 2, 0, 0, k)} for k in range(4)]
              + [{"annotation_id": 10 + k, "event_id": None, "captured_at": clip} for k in range(5)]
              + [{"annotation_id": 20 + k, "event_id": None, "captured_at": None} for k in range(3)])
    assert len({visit_of(p) for p in photos}) == 2 + 3  # the burst, the clip, three photos alone
    visits = {}
    for photo in photos:
        visits.setdefault(visit_of(photo), set()).add(photo["annotation_id"])
    for seed in range(20):
        for budget in (1, 3, 4, 6, 9, 12):
            picked = whole_visits(photos, budget, np.random.default_rng(seed))
            ids = [p["annotation_id"] for p in picked]
            assert ids == sorted(set(ids)) and len(ids) == min(budget, len(photos))
            touched = [v for v in visits.values() if v & set(ids)]
            assert sum(1 for v in touched if not v <= set(ids)) <= 1  # only the visit that met the budget is cut
    firsts = {tuple(p["annotation_id"] for p in whole_visits(photos, 4, np.random.default_rng(s))) for s in range(20)}
    assert len(firsts) > 2  # visits come in random order


def test_the_cut_is_chosen_on_every_labelled_individual_within_a_budget(tmp_path: Path,
                                                                       cautious_season: Path) -> None:
    from registry.curation.discovery import DiscoveryService

    data = _copy(cautious_season, tmp_path)
    with Registry(Settings.load(data)) as registry:
        labelled = registry.catalog.labelled_annotations("synleopard")
        service = DiscoveryService(registry)
        units = service.labelled_units("synleopard", max_photos=2)
        assert {u.individual_id for u in units} == {p["individual_id"] for p in labelled}
        assert max(sum(1 for u in units if u.individual_id == i) for i in {u.individual_id for u in units}) == 2
        assert all(len(u.annotations) == 1 and u.truth == str(u.individual_id) for u in units)
        everything = service.labelled_units("synleopard", max_photos=1000)
        assert sorted(u.annotations[0] for u in everything) == sorted(p["annotation_id"] for p in labelled)
