"""Individuals: the list, one animal's page (history, map, attributes), two side by side, and merging them."""

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from registry.interfaces.web.maps import sighting_map
from registry.interfaces.web.pages import UI, Person, ServiceDep, allowed, curate, page, service_of
from registry.store.catalog import CatalogError

router = APIRouter()


@router.get("/individuals", response_class=HTMLResponse)
def individuals_page(request: Request, who: Person, service: ServiceDep, species: str | None = None,
                     q: str = "") -> HTMLResponse:
    rows = service.reads.individuals(species or None)
    if q:
        needle = q.lower()
        rows = [r for r in rows if needle in r["code"].lower() or needle in (r["name"] or "").lower()
                or needle in (r["nickname"] or "").lower()]
    return page(request, "individuals.html", who, rows=rows[:500], total=len(rows), q=q, species=species,
                species_list=service.reads.species())


@router.get("/individuals/{code}", response_class=HTMLResponse)
def individual_page(request: Request, code: str, who: Person, service: ServiceDep, error: str | None = None,
                    undone: int | None = None, done: int | None = None) -> HTMLResponse:
    try:
        history = service.reads.history(code)
    except CatalogError as exc:
        raise HTTPException(404, str(exc)) from exc
    points = [(s["latitude"], s["longitude"], " ".join(filter(None, [s["location"], (s["captured_at"] or "")[:10]])))
              for s in history["sightings"] if s["latitude"] is not None and s["longitude"] is not None]
    stations: dict[str, dict[str, Any]] = {}  # each named place once, labelled on the map
    placed = sighting_map(points, service.settings.web_tile_url)
    for sighting, point in zip([s for s in history["sightings"] if s["latitude"] is not None
                                and s["longitude"] is not None], placed["points"], strict=True):
        if sighting["location"] and sighting["location"] not in stations:
            stations[sighting["location"]] = {"name": sighting["location"], "x": point["x"], "y": point["y"]}
    attributes = [(ATTRIBUTE_WORDS.get(name, name.replace("_", " ").capitalize()), _in_words(value))
                  for name, value in history["attributes"].items()]
    return page(request, "individual.html", who, h=history, map=placed, stations=list(stations.values())[:12],
                attributes=attributes, error=error[:2000] if error else None, undone=undone, done=done,
                tile_url=service.settings.web_tile_url)


ATTRIBUTE_WORDS = {"sex": "Sex", "life_stage": "Life stage", "nickname": "Nickname",
                   "alternate_ids": "Ids elsewhere", "notes": "Notes"}


def _in_words(value: Any) -> str:
    """An attribute as a person reads it: lists joined, nothing as a dash."""
    if value is None or value == [] or value == "":
        return "—"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


@router.post("/individuals/{code}/attributes")
async def edit_attributes(request: Request, code: str) -> Response:
    form = dict(await request.form())
    who = allowed(request, form.get("csrf"), "review")  # type: ignore[arg-type]
    values: dict[str, Any] = {name: form.get(name) for name in ("sex", "life_stage", "nickname", "notes")
                              if form.get(name) is not None}
    if form.get("alternate_ids") is not None:
        values["alternate_ids"] = [v.strip() for v in str(form["alternate_ids"]).split(",") if v.strip()]
    result, error = curate(service_of(request), who, lambda c: c.edit(code, "edited in the workspace", **values))
    suffix = urlencode({"error": error} if error else {"done": result["change"]})  # type: ignore[index]
    return RedirectResponse(f"{UI}/individuals/{code}?{suffix}", status_code=303)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, who: Person, service: ServiceDep, a: str, b: str,
                 error: str | None = None) -> HTMLResponse:
    if len(a) > 200 or len(b) > 200:
        raise HTTPException(404, "no individual has a code that long")
    try:
        first, second = service.reads.history(a), service.reads.history(b)
    except CatalogError as exc:
        raise HTTPException(404, str(exc)) from exc
    return page(request, "compare.html", who, a=first, b=second, error=error[:2000] if error else None)


@router.post("/individuals/merge")
async def merge(request: Request) -> Response:
    form = dict(await request.form())
    who = allowed(request, form.get("csrf"), "admin")  # type: ignore[arg-type]
    keep, absorb = str(form.get("keep") or ""), str(form.get("absorb") or "")
    result, error = curate(service_of(request), who, lambda c: c.merge(keep, absorb, "merged in the workspace"))
    if error:
        return RedirectResponse(f"{UI}/compare?" + urlencode({"a": keep, "b": absorb}) + "&" +
                                urlencode({"error": error}), status_code=303)
    return RedirectResponse(f"{UI}/individuals/{keep}?done={result['change']}", status_code=303)  # type: ignore[index]
