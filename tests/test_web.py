"""The reviewers' workspace in a real browser: headless Chromium (Debian's, driven by Playwright) against a real
`registry serve` on 127.0.0.1 over a registry with automatic decisions to review."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from registry.curation import review
from registry.ingest.ingestion import Ingestor
from registry.interfaces import tokens
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store.catalog import Catalog
from registry.store.tables import Individual, Sighting

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
# CI sets REGISTRY_REQUIRE_BROWSER: there a missing browser fails the tests instead of skipping them
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("REGISTRY_REQUIRE_BROWSER"),
                                reason="no system Chromium (Debian: apt-get install chromium)")
REPO = Path(__file__).resolve().parents[1]
DONE = re.compile(r"[?&]done=\d+")  # where a recorded change redirects
MARGIN = "10"  # every automatic decision is in the queue, most uncertain first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, population: Path,
              offline_pipeline: Pipeline) -> Iterator[dict]:
    """A registry with season 1 as references and season 2 identified, served on a free port; tokens of each
    scope."""
    home = tmp_path_factory.mktemp("web") / "reg"
    settings = Settings(data_dir=home, profile="offline")
    Registry.init(settings)
    with Registry(settings, pipeline=offline_pipeline) as registry:
        ingest = Ingestor(registry)
        ingest.ingest(population / "season1" / "manifest.csv", "season-1", "reference")
        registry.calibrate()  # decisions on calibrated scores: the match page shows raw -> calibrated
        ingest.ingest(population / "season2" / "manifest.csv", "season-2", "identify")
    catalog = Catalog(Settings.load(home).sqlalchemy_url)
    keys = {scope: tokens.create(catalog, f"{scope}-person", scope) for scope in ("read", "review", "admin")}
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "registry", "--data-dir", str(home), "serve", "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(base + "/health", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        raise AssertionError(f"registry serve did not come up: {server.stdout.read()[-2000:]}")
    yield {"base": base, "keys": keys, "catalog": catalog, "home": home, "server": server}
    server.terminate()
    server.wait(timeout=30)
    catalog.close()


@pytest.fixture(scope="module")
def browser(workspace: dict) -> Iterator[object]:
    assert CHROMIUM is not None, "REGISTRY_REQUIRE_BROWSER is set but no chromium is installed"
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _signed_in(browser: object, workspace: dict, scope: str) -> tuple[object, object, list[str]]:
    """A browser context signed in with a token of `scope`; every request leaving 127.0.0.1 is blocked and
    recorded (the workspace must work offline)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    outside: list[str] = []

    def guard(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(workspace["base"]) or url.startswith("data:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    context.route("**/*", guard)
    page = context.new_page()
    page.goto(workspace["base"] + "/ui/queue")
    assert "/login" in page.url  # signed out: the sign-in page
    page.get_by_label("Token").fill(workspace["keys"][scope])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/queue")
    return context, page, outside


def _sighting_state(catalog: Catalog, decision_id: int) -> tuple[str, str]:
    with catalog.transaction() as session:
        sighting = session.scalar(select(Sighting).where(Sighting.decision_id == decision_id))
        return sighting.method, session.get(Individual, sighting.individual_id).code


def test_reviewing_in_the_browser(browser: object, workspace: dict) -> None:
    base, catalog = workspace["base"], workspace["catalog"]
    context, page, outside = _signed_in(browser, workspace, "admin")
    cookie = next(c for c in context.cookies() if c["name"] == "registry_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # the queue lists the uncertain decisions in the review order
    page.goto(f"{base}/ui/queue?margin={MARGIN}")
    expected = [e["decision"] for e in review.queue(catalog, limit=500, margin=float(MARGIN))]
    assert len(expected) >= 3
    shown = [int(row.get_attribute("data-decision")) for row in page.locator("tr[data-decision]").all()]
    assert shown == expected
    assert page.locator("#left").inner_text().startswith(f"{len(expected)} decision")
    _screenshot(page, "queue")

    # the confirm key on a match page records a confirmation
    first = expected[0]
    page.goto(f"{base}/ui/decisions/{first}?margin={MARGIN}")
    proposed = _sighting_state(catalog, first)[1]
    _screenshot(page, "match-page")
    page.keyboard.press("c")
    page.wait_for_url(DONE)  # the page the action led to, loaded (its scripts too)
    assert _sighting_state(catalog, first) == ("confirmed", proposed)
    assert first not in [e["decision"] for e in review.queue(catalog, limit=500, margin=float(MARGIN))]

    # "new individual" on the next one creates one; undo on the page reverts it
    second = expected[1]
    page.goto(f"{base}/ui/decisions/{second}?margin={MARGIN}")
    before_code = _sighting_state(catalog, second)[1]
    individuals_before = len(catalog.individuals())
    page.keyboard.press("n")
    page.wait_for_url(DONE)  # the page the action led to, loaded (its scripts too)
    method, code = _sighting_state(catalog, second)
    assert method == "corrected" and code != before_code and len(catalog.individuals()) == individuals_before + 1
    page.keyboard.press("u")
    page.wait_for_url(re.compile(r"undone=\d+"))  # the banner of the change is on the page already: wait for the undo
    assert _sighting_state(catalog, second) == ("automatic", before_code)
    assert len(catalog.individuals()) == individuals_before

    # a candidate by its number: reassigns to that individual
    third = expected[2]
    page.goto(f"{base}/ui/decisions/{third}?margin={MARGIN}")
    second_candidate = page.locator(".candidate").nth(1).get_attribute("data-code")
    page.keyboard.press("2")
    page.wait_for_url(DONE)  # the page the action led to, loaded (its scripts too)
    assert _sighting_state(catalog, third) == ("corrected", second_candidate)

    # the individual page: photos, history, attributes (edited), the offline map
    page.goto(f"{base}/ui/individuals/{proposed}")
    assert page.locator("section[aria-label=Photos] img").count() == len(catalog.history(proposed)["sightings"])
    page.get_by_label("Nickname").fill("Spotty")
    page.get_by_role("button", name="Save attributes").click()
    page.wait_for_url(DONE)  # the page the action led to, loaded (its scripts too)
    assert catalog.history(proposed)["attributes"]["nickname"] == "Spotty"
    _screenshot(page, "individual-page")

    # a post without the session's CSRF secret is refused, whoever sends it
    forged = context.request.post(f"{base}/ui/decisions/{third}/reject", form={"margin": MARGIN})
    assert forged.status == 403 and _sighting_state(catalog, third)[0] == "corrected"

    # every page and the API docs load with nothing from outside 127.0.0.1
    for path in ("/", "/ui/activity", "/ui/duplicates", "/ui/individuals", "/docs"):
        assert page.goto(base + path).status == 200
    page.wait_for_selector(".swagger-ui")
    assert outside == []
    # every visible control has a label (keyboard and screen-reader use)
    page.goto(f"{base}/ui/decisions/{expected[3] if len(expected) > 3 else third}?margin={MARGIN}")
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.name)""")
    assert unlabelled == []
    context.close()


def test_a_read_token_browses_but_cannot_decide(browser: object, workspace: dict) -> None:
    base, catalog = workspace["base"], workspace["catalog"]
    context, page, _ = _signed_in(browser, workspace, "read")
    decision = review.queue(catalog, limit=500, margin=float(MARGIN))[0]["decision"]
    page.goto(f"{base}/ui/decisions/{decision}?margin={MARGIN}")
    assert page.locator("button[data-key]").count() == 0 and page.locator(".candidate").count() > 0
    before = _sighting_state(catalog, decision)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")  # the session's own secret
    forged = context.request.post(f"{base}/ui/decisions/{decision}/confirm", form={"csrf": csrf})
    assert forged.status == 403 and "scope" in forged.text() and _sighting_state(catalog, decision) == before
    page.keyboard.press("c")  # no button declares the key: nothing happens
    assert _sighting_state(catalog, decision) == before
    context.close()


def test_signed_out_and_bad_tokens_see_only_the_sign_in_page(browser: object, workspace: dict) -> None:
    base = workspace["base"]
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(base + "/ui/individuals")
    assert "/login" in page.url
    page.get_by_label("Token").fill("reg_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text().startswith("That token is not valid")
    assert context.request.get(base + "/ui/thumbs/1/160.jpg", max_redirects=0).status == 303
    assert context.request.post(base + "/ui/decisions/1/confirm", form={"csrf": "x"}).status == 403
    context.close()


def _screenshot(page: object, name: str) -> None:
    """Saved under docs/images/ when REGISTRY_WRITE_SCREENSHOTS is set (they are committed and shown in the
    README); otherwise taken and discarded, so the pages are at least rendered whole."""
    target = REPO / "docs" / "images" / f"workspace-{name}.png"
    if os.environ.get("REGISTRY_WRITE_SCREENSHOTS"):
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=True)  # type: ignore[attr-defined]
    else:
        assert page.screenshot(full_page=True)[:4] == b"\x89PNG"  # type: ignore[attr-defined]


def test_zz_the_pages_decisions_reached_the_vector_payloads(workspace: dict) -> None:
    """Last in the module: with the server stopped (embedded Qdrant is one process's), every vector payload
    names the individual SQL gives its annotation after the decisions made in the pages."""
    from registry.store.vector_engines import open_vector_index

    workspace["server"].terminate()
    workspace["server"].wait(timeout=30)
    settings = Settings.load(workspace["home"])
    states = workspace["catalog"].annotation_states()
    with workspace["catalog"].transaction() as session:
        changed = set(session.scalars(select(Sighting.annotation_id).where(Sighting.method != "reference",
                                                                           Sighting.method != "automatic")))
    assert changed  # the pages confirmed and corrected some
    with open_vector_index(settings) as index:
        for collection in index.collections():
            payloads = dict(index.payloads(collection))
            assert {a: payloads[a]["individual_id"] for a in states} == \
                {a: s["individual_id"] for a, s in states.items()}


def test_duplicates_finds_an_animal_filed_under_two_codes(tmp_path: Path, population: Path,
                                                          offline_pipeline: Pipeline) -> None:
    """Photos of one animal labelled under a second name: `find_duplicates` lists the two codes as a pair."""
    import csv

    from registry.services.duplicates import find_duplicates

    def rows(season: str) -> list[dict[str, str]]:
        with open(population / season / "manifest.csv", newline="") as handle:
            return list(csv.DictReader(handle))

    returning = [r for r in rows("season2") if r["identity"] in {x["identity"] for x in rows("season1")}]
    animal = returning[0]["identity"]
    settings = Settings(data_dir=tmp_path / "reg", profile="offline")
    Registry.init(settings)
    second = tmp_path / "second-name.csv"  # one of its season-2 photos, filed under another name
    second.write_text("image,identity,species\n"
                      f"{population / 'season2' / returning[0]['image']},the-same-animal,{returning[0]['species']}\n")
    with Registry(settings, pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(population / "season1" / "manifest.csv", "s1", "reference")
        Ingestor(registry).ingest(second, "s2", "reference")
        codes = {r["name"]: r["code"] for r in registry.catalog.individuals()}
        report = find_duplicates(registry, margin=1000.0)
    pairs = {frozenset((p["individual"], p["other"])) for p in report["pairs"]}
    assert report["checked"] == len(codes)
    assert frozenset((codes[animal], codes["the-same-animal"])) in pairs
    best = report["pairs"][0]
    assert {best["individual"], best["other"]} == {codes[animal], codes["the-same-animal"]}
