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
from dataclasses import replace
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


def _burst(population: Path, out: Path, photos: int = 3) -> Path:
    """A camera-trap burst: `photos` frames of one season-2 animal seconds apart at one station (each a slightly
    different crop, so each is a new photo), as a manifest with one sequence: identified as one event."""
    import csv

    from PIL import Image

    with open(population / "season2" / "manifest.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    out.mkdir(parents=True)
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "species", "viewpoint", "captured_at", "latitude", "longitude", "location",
                         "sequence"])
        with Image.open(population / "season2" / first["image"]) as source:
            for frame in range(photos):
                name = f"burst-{frame}.jpg"
                source.crop((frame * 3, frame * 2, source.width - 3, source.height - 2)).save(out / name,
                                                                                              quality=92)
                writer.writerow([name, first["species"], first["viewpoint"], f"2022-07-01T06:00:0{frame}",
                                 first["latitude"], first["longitude"], "station-burst", "burst-1"])
    return out / "manifest.csv"


@pytest.fixture(scope="module")
def web_population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Season 1 as references and a season 2 big enough for a 20-decision review queue."""
    from registry.evaluate import synth

    root = tmp_path_factory.mktemp("web-population")
    synth.generate(root, individuals=10, seasons=2, seed=5, photos_per_sighting=(3, 3), return_rate=0.75,
                   new_per_season=0.3)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, web_population: Path) -> Iterator[dict]:
    """A registry with season 1 as references, season 2 identified and a 3-photo burst identified as one event,
    served on a free port; tokens of each scope."""
    population = web_population
    home = tmp_path_factory.mktemp("web") / "reg"
    settings = Settings(data_dir=home, profile="offline")
    # the descriptor engine (as the demo): the pages are what is tested, and the duplicates and correspondence
    # work the server does for them takes milliseconds a pair instead of LightGlue's ~0.4 s
    settings.local = replace(settings.local, engine="mnn")
    Registry.init(settings)
    with Registry(Settings.load(home)) as registry:
        ingest = Ingestor(registry)
        ingest.ingest(population / "season1" / "manifest.csv", "season-1", "reference")
        registry.calibrate()  # decisions on calibrated scores: the match page shows raw -> calibrated
        ingest.ingest(population / "season2" / "manifest.csv", "season-2", "identify")
        ingest.ingest(_burst(population, home.parent / "burst"), "season-2-burst", "identify")
    catalog = Catalog(Settings.load(home).sqlalchemy_url)
    keys = {scope: tokens.create(catalog, f"{scope}-person", scope) for scope in ("read", "review", "admin")}
    port = _free_port()
    # the server's output goes to a file: a pipe nobody reads fills up and blocks the server mid-request
    log_path = home.parent / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115  (closed when the server has stopped)
    server = subprocess.Popen([sys.executable, "-m", "registry", "--data-dir", str(home), "serve", "--port",
                               str(port)], stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(base + "/health", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        raise AssertionError(f"registry serve did not come up: {log_path.read_text()[-2000:]}")
    yield {"base": base, "keys": keys, "catalog": catalog, "home": home, "server": server}
    server.terminate()
    server.wait(timeout=30)
    log.close()
    catalog.close()


@pytest.fixture(scope="module")
def browser(workspace: dict) -> Iterator[object]:
    assert CHROMIUM is not None, "REGISTRY_REQUIRE_BROWSER is set but no chromium is installed"
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _signed_in(browser: object, workspace: dict, scope: str, viewport: dict | None = None,
               touch: bool = False) -> tuple[object, object, list[str]]:
    """A browser context signed in with a token of `scope`; every request leaving 127.0.0.1 is blocked and
    recorded (the workspace must work offline)."""
    context = browser.new_context(viewport=viewport or LAPTOP, has_touch=touch)  # type: ignore[attr-defined]
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


def catalog_changes(catalog: Catalog) -> list[dict]:
    from registry.curation.curator import Curator

    return Curator.changes_in(catalog, 500)


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
    # the undo names the change it reverted and comes back to the decision it touched, which says what it is now
    assert f"/ui/decisions/{second}" in page.url
    assert page.get_by_role("status").inner_text().startswith("Undone: ")
    assert page.locator("#now").inner_text() == before_code

    # a candidate by its number, in the every-photo view too: reassigns to that individual
    third = expected[2]
    page.goto(f"{base}/ui/decisions/{third}?margin={MARGIN}&view=images")
    second_candidate = page.locator(".decide button[data-key='2']").get_attribute("title").removeprefix("This is ")
    page.keyboard.press("2")
    page.wait_for_url(DONE)  # the page the action led to, loaded (its scripts too)
    assert _sighting_state(catalog, third) == ("corrected", second_candidate)
    # the activity, filtered to reassignments, links the decision and the individual that change touched
    page.goto(f"{base}/ui/activity?kind=reassign")
    changes = catalog_changes(catalog)
    assert {"confirm", "reassign"} <= {c["kind"] for c in changes}
    assert page.locator("tr[data-change]").count() == sum(1 for c in changes if c["kind"] == "reassign")
    assert page.locator(f"a[href='/ui/decisions/{third}']").count() >= 1
    assert page.locator(f"a[href='/ui/individuals/{second_candidate}']").count() >= 1

    # the individual page: photos, history, attributes (edited), the offline map
    page.goto(f"{base}/ui/individuals/{proposed}")
    assert page.locator("section[aria-label=Photos] img").count() == len(catalog.history(proposed)["sightings"])
    page.get_by_label("Nickname").fill("Spotty")
    page.get_by_role("button", name="Save attributes").click()
    page.wait_for_url(DONE)  # the page the action led to, loaded (its scripts too)
    assert catalog.history(proposed)["attributes"]["nickname"] == "Spotty"
    _screenshot(page, "individual-page")
    page.keyboard.press("u")  # the edit is undone in place, on the same page
    page.wait_for_url(re.compile(rf"/ui/individuals/{proposed}\?undone=\d+"))
    assert catalog.history(proposed)["attributes"]["nickname"] is None
    page.get_by_label("Nickname").fill("Spotty")
    page.get_by_role("button", name="Save attributes").click()
    page.wait_for_url(DONE)

    # compare: the reviewer chooses which individual is kept; a merge refused (another tab merged first) says why
    other = next(i["code"] for i in catalog.individuals() if i["code"] != proposed)
    page.goto(f"{base}/ui/compare?a={proposed}&b={other}")
    assert page.get_by_role("button", name=f"Keep {other}, merge {proposed} into it").is_visible()
    elsewhere = context.new_page()
    elsewhere.goto(f"{base}/ui/compare?a={proposed}&b={other}")
    elsewhere.get_by_role("button", name=f"Keep {proposed}, merge {other} into it").click()
    elsewhere.wait_for_url(re.compile(rf"/ui/individuals/{proposed}\?done=\d+"))
    assert catalog.history(other)["individual"] == proposed
    page.get_by_role("button", name=f"Keep {proposed}, merge {other} into it").click()  # the stale page
    assert "The merge was refused: " in page.get_by_role("alert").inner_text()
    page.goto(f"{base}/ui/individuals/{proposed}")
    page.get_by_role("listitem").filter(has_text=f"merged {other}").get_by_role("button", name="Undo").click()
    page.wait_for_url(re.compile(r"undone=\d+"))
    assert catalog.history(other)["individual"] == other

    # a post without the session's CSRF secret is refused, whoever sends it
    forged = context.request.post(f"{base}/ui/decisions/{third}/reject", form={"margin": MARGIN})
    assert forged.status == 403 and _sighting_state(catalog, third)[0] == "corrected"

    # every page and the API docs load with nothing from outside 127.0.0.1
    for path in ("/", "/ui/activity", "/ui/duplicates", "/ui/individuals", "/docs"):
        assert page.goto(base + path).status == 200
    # the API docs render the operations the app publishes (Swagger UI reads its OpenAPI version)
    page.wait_for_selector(".opblock", timeout=15000)
    operations = page.locator(".opblock").count()
    assert operations >= 20 and page.get_by_text("Unable to render this definition").count() == 0
    assert page.locator(".opblock-summary-path", has_text="/decisions/{decision_id}/confirm").count() == 1
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
    refused = context.request.post(base + "/ui/decisions/1/confirm", form={"csrf": "x"})
    assert refused.status == 403 and "Sign in again" in refused.text()  # signed out in another tab: a page
    context.close()


OUT_OF_VIEW = """(selector) => [...document.querySelectorAll(selector)]
    .filter(e => e.offsetParent !== null || getComputedStyle(e).position === 'fixed')
    .map(e => { const r = e.getBoundingClientRect();
                return (r.width > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth)
                       ? null : `${e.textContent.trim()} at ${Math.round(r.left)},${Math.round(r.top)}`; })
    .filter(Boolean)"""
SIDEWAYS = "() => document.documentElement.scrollWidth - window.innerWidth"


def _event_decision(catalog: Catalog, photos: int = 3) -> int:
    return next(e["decision"] for e in review.queue(catalog, limit=500, margin=None) if e["annotations"] == photos)


@pytest.mark.parametrize("size", ["laptop", "phone"])
def test_the_decision_stays_in_view_and_the_photos_are_large(browser: object, workspace: dict, size: str) -> None:
    """On the match page of a 3-photo event, every decision button and the score line are inside the window at
    every scroll position; the query and the candidate are shown large; nothing scrolls sideways."""
    viewport = LAPTOP if size == "laptop" else PHONE
    context, page, _ = _signed_in(browser, workspace, "review", viewport, touch=size == "phone")
    decision = _event_decision(workspace["catalog"])
    page.goto(f"{workspace['base']}/ui/decisions/{decision}")
    page.wait_for_function("document.getElementById('query-photo').naturalWidth > 0")
    assert page.locator(".query-strip .thumb").count() == 3  # the event's photos, as a strip
    buttons = ".decide button[data-key], .decide .line"
    assert page.locator(".decide button[data-key]").count() >= 4  # confirm, candidates 1.., new, reject
    height = page.evaluate("document.documentElement.scrollHeight - innerHeight")
    if size == "phone":
        assert height > 200, "the phone page should be long enough that scrolling is tested"
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        page.evaluate(f"window.scrollTo(0, {int(height * fraction)})")
        page.wait_for_timeout(50)
        assert page.evaluate(OUT_OF_VIEW, buttons) == [], (size, fraction)
    page.evaluate("window.scrollTo(0, 0)")
    box = page.locator("#query-photo").bounding_box()
    share = box["width"] * box["height"] / (viewport["width"] * viewport["height"])
    print(f"\n{size}: query photo {box['width']:.0f} x {box['height']:.0f} px ({share:.0%} of the window)")
    assert share >= (0.12 if size == "laptop" else 0.08)
    assert page.evaluate(SIDEWAYS) <= 0
    page.wait_for_selector(".stage[data-drawn]")
    _screenshot(page, f"match-{size}", full_page=False)  # what the reviewer sees in the window
    if size == "phone":  # touch: a swipe switches candidate, a tap decides
        cards = page.locator(".candidates .candidate")
        assert cards.count() > 1
        box = page.locator("#query-pane .viewport").bounding_box()
        y, start, end = box["y"] + box["height"] / 2, box["x"] + box["width"] * 0.8, box["x"] + box["width"] * 0.2
        touch = context.new_cdp_session(page)
        touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": start, "y": y}]})
        for step in range(1, 6):
            x = start + (end - start) * step / 5
            touch.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
            page.wait_for_timeout(30)
        page.wait_for_timeout(200)  # the finger rests before lifting: no fling (a tap would only stop a fling)
        touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        expected = cards.nth(1).locator(".thumb").first.get_attribute("data-candidate")
        page.wait_for_function(f"document.getElementById('candidate-photo').dataset.annotation === '{expected}'")
        with page.expect_navigation():
            page.locator(".decide button[data-key='c']").tap()
        assert _sighting_state(workspace["catalog"], decision)[0] == "confirmed"
    context.close()


def test_correspondences_are_drawn_from_the_stored_matches(browser: object, workspace: dict) -> None:
    """The overlay draws exactly the correspondences the server stored for the pair, one colour per pair on both
    photos; hovering one highlights its partner; `m` hides them; arrow keys switch candidates."""
    context, page, _ = _signed_in(browser, workspace, "review")
    matched = [e for e in review.queue(workspace["catalog"], limit=500, margin=None) if e["outcome"] == "match"]
    decision = max(matched, key=lambda e: e["score"])["decision"]  # a returning animal: points to match
    page.goto(f"{workspace['base']}/ui/decisions/{decision}")
    page.wait_for_selector(".stage[data-drawn]")
    query = page.locator("#query-photo").get_attribute("data-annotation")
    candidate = page.locator("#candidate-photo").get_attribute("data-annotation")
    stored = context.request.get(f"{workspace['base']}/ui/pairs/{query}/{candidate}.json").json()
    drawn = page.locator("#query-pane circle[data-pair]").count()
    assert drawn == stored["count"] == page.locator("#candidate-pane circle[data-pair]").count()
    assert stored["count"] > 0, "a confident match of a returning animal must have matching points"
    assert str(stored["count"]) in page.locator("#pairs-state").inner_text()
    page.locator("#query-pane circle[data-pair='0']").dispatch_event("pointerenter")
    assert "hot" in (page.locator("#candidate-pane circle[data-pair='0']").get_attribute("class") or "")
    page.keyboard.press("m")
    assert not page.locator("#query-pane circle[data-pair='0']").is_visible()
    page.keyboard.press("m")
    assert page.locator("#query-pane circle[data-pair='0']").is_visible()
    cards = page.locator(".candidates .candidate")
    if cards.count() > 1:
        second = cards.nth(1)
        page.keyboard.press("ArrowRight")
        expected = second.locator(".thumb").first.get_attribute("data-candidate")
        page.wait_for_function(f"document.getElementById('candidate-photo').dataset.annotation === '{expected}'")
        assert second.get_attribute("aria-current") == "true"
        assert second.get_attribute("data-code") in page.locator("#candidate-caption").inner_text()
        page.wait_for_function("document.querySelector('.stage').dataset.drawn !== undefined && "
                               "document.querySelectorAll('#query-pane circle[data-pair]').length === "
                               "Number(document.querySelector('.stage').dataset.drawn)")
    # the evidence in words, never a raw score name with an arrow
    evidence = page.locator(".evidence").first.inner_text()
    assert "matching point" in evidence and "→" in evidence and "aliked" not in evidence
    context.close()


def test_no_page_scrolls_sideways_on_a_phone(browser: object, workspace: dict) -> None:
    """Every workspace page fits 390 px: tables scroll inside their own box, long names wrap."""
    context, page, _ = _signed_in(browser, workspace, "admin", PHONE, touch=True)
    base, catalog = workspace["base"], workspace["catalog"]
    codes = [i["code"] for i in catalog.individuals()]
    decision = review.queue(catalog, limit=500, margin=None)[0]["decision"]
    paths = ["/ui/queue", f"/ui/decisions/{decision}", f"/ui/decisions/{decision}?view=images", "/ui/individuals",
             f"/ui/individuals/{codes[0]}", f"/ui/compare?a={codes[0]}&b={codes[1]}", "/ui/duplicates",
             "/ui/activity", "/ui/decisions/999999999", "/ui/queue?margin=nan"]
    wide = {}
    for path in paths:
        page.goto(base + path)
        page.wait_for_load_state("load")
        overflow = page.evaluate(SIDEWAYS)
        if overflow > 0:
            wide[path] = overflow
    assert wide == {}, f"pages wider than the phone (px): {wide}"
    context.close()


def test_keyboard_only_review_of_twenty_decisions(browser: object, workspace: dict) -> None:
    """A reviewer works through 20 decisions with the keyboard alone (confirm, or this-is-candidate-1 where the
    decision was a new individual); each is recorded, and the time per decision is reported."""
    context, page, _ = _signed_in(browser, workspace, "review")
    catalog = workspace["catalog"]
    pending = review.queue(catalog, limit=500, margin=None)
    assert len(pending) >= 20, f"the workspace should hold 20 decisions to review, not {len(pending)}"
    page.goto(f"{workspace['base']}/ui/decisions/{pending[0]['decision']}")
    reviewed, began = [], time.perf_counter()
    for _ in range(20):
        here = int(page.locator(".review").get_attribute("data-decision"))
        key = "c" if page.locator("button[data-key='c']").is_enabled() else "1"
        with page.expect_navigation():
            page.keyboard.press(key)
        reviewed.append(here)
    seconds = (time.perf_counter() - began) / 20
    print(f"\nkeyboard review: 20 decisions, {seconds:.2f} s per decision (page load and recording included)")
    assert len(set(reviewed)) == 20
    for decision_id in reviewed:
        assert _sighting_state(catalog, decision_id)[0] in ("confirmed", "corrected")
    context.close()


def test_queue_bulk_confirm_counts_and_refused_filters(browser: object, workspace: dict) -> None:
    """The queue shows work by default, counts per species and survey, refuses a filter it cannot use with a
    message, and confirms several selected decisions at once (each its own change)."""
    context, page, _ = _signed_in(browser, workspace, "review")
    base, catalog = workspace["base"], workspace["catalog"]
    page.goto(f"{base}/ui/queue")
    left = review.count(catalog, margin=None)
    assert left >= 2 and page.locator("tr[data-decision]").count() == min(left, 200)
    chips = page.locator(".counts .chip")
    groups = review.counts(catalog, margin=None)
    assert chips.count() == len(groups) >= 1  # per species and survey
    assert sum(int(chips.nth(i).locator("strong").inner_text()) for i in range(chips.count())) == left
    for bad in ("margin=nan", "margin=-1", f"survey={'s' * 3000}"):
        assert page.goto(f"{base}/ui/queue?{bad}").status == 400
        assert page.get_by_role("alert").is_visible()
    page.goto(f"{base}/ui/queue")
    rows = page.locator("tr[data-decision]")
    chosen = [int(rows.nth(i).get_attribute("data-decision")) for i in range(2)]
    for decision_id in chosen:
        page.get_by_label(f"select decision {decision_id}").check()
    page.get_by_role("button", name="Confirm selected").click()
    page.wait_for_url(re.compile(r"done="))
    assert page.get_by_role("status").inner_text().startswith("Confirmed 2 decisions")
    assert [_sighting_state(catalog, d)[0] for d in chosen] == ["confirmed", "confirmed"]
    assert review.count(catalog, margin=None) == left - 2
    context.close()


def test_duplicates_check_runs_on_the_server_and_a_dismissed_pair_stays_gone(browser: object,
                                                                              workspace: dict) -> None:
    """The duplicates check runs as a job of the server (progress shown) while it serves; "not the same animal"
    removes a pair for good (a new check does not propose it again)."""
    context, page, _ = _signed_in(browser, workspace, "admin")
    base = workspace["base"]
    page.goto(f"{base}/ui/duplicates")
    page.get_by_role("button", name=re.compile("Check")).click()
    page.wait_for_selector("#run-check", timeout=120000)  # the page refreshes itself until the job is done
    pairs = page.locator("tr[data-pair]")
    if pairs.count() == 0:
        pytest.skip("this population produced no possible duplicate to dismiss")
    pair = pairs.first.get_attribute("data-pair")
    pairs.first.get_by_role("button", name="Not the same animal").click()
    page.wait_for_url(re.compile(r"done="))
    assert page.locator(f"tr[data-pair='{pair}']").count() == 0
    page.get_by_role("button", name="Check again").click()
    page.wait_for_selector("#run-check", timeout=120000)
    assert page.locator(f"tr[data-pair='{pair}']").count() == 0
    first, second = pair.split("~")
    assert (first, second) in workspace["catalog"].distinct_codes() or \
        (second, first) in workspace["catalog"].distinct_codes()
    context.close()


def _screenshot(page: object, name: str, full_page: bool = True) -> None:
    """Saved under docs/images/ when REGISTRY_WRITE_SCREENSHOTS is set (they are committed and shown in the
    README); otherwise taken and discarded, so the pages are at least rendered whole."""
    target = REPO / "docs" / "images" / f"workspace-{name}.png"
    if os.environ.get("REGISTRY_WRITE_SCREENSHOTS"):
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=full_page)  # type: ignore[attr-defined]
    else:
        assert page.screenshot(full_page=full_page)[:4] == b"\x89PNG"  # type: ignore[attr-defined]


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
