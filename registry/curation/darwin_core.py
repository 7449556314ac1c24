"""The registry's sightings as a Darwin Core Archive (occurrence core), the format GBIF ingests.

One occurrence per active sighting: `organismID` is the individual's code (so GBIF links every re-sighting of one
animal), `basisOfRecord` MachineObservation for automatic decisions and HumanObservation for reference labels,
confirmations and corrections, `identificationVerificationStatus` says which. The archive is a zip of
`occurrence.csv`, `meta.xml` (the column → term mapping) and a minimal `eml.xml` (title, creator, date).
"""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from sqlalchemy import select

from registry.curation.exports import sightings
from registry.curation.spreadsheet_safety import safe_row
from registry.store.catalog import Catalog
from registry.store.tables import Species

DWC = "http://rs.tdwg.org/dwc/terms/"
TERMS = ("occurrenceID", "eventID", "eventDate", "basisOfRecord", "organismID", "scientificName", "vernacularName",
         "sex", "lifeStage", "individualCount", "decimalLatitude", "decimalLongitude", "geodeticDatum",
         "locationID", "locality", "identifiedBy", "dateIdentified", "identificationVerificationStatus",
         "identificationRemarks", "associatedMedia", "occurrenceStatus")
VERIFICATION = {"reference": "verified by reference label", "confirmed": "verified by a reviewer",
                "corrected": "corrected by a reviewer", "automatic": "unverified machine identification"}


def occurrences(catalog: Catalog, species: str | None = None) -> list[dict[str, Any]]:
    with catalog.transaction() as session:
        scientific = {s.name: s.scientific_name for s in session.scalars(select(Species))}
    rows = []
    for s in sightings(catalog, species):
        machine = s["method"] == "automatic"
        rows.append({
            "occurrenceID": f"sighting-{s['sighting_id']}",
            "eventID": s["event"] or s["deployment"] or s["survey"],
            "eventDate": s["captured_at"],
            "basisOfRecord": "MachineObservation" if machine else "HumanObservation",
            "organismID": s["individual"],
            "scientificName": scientific.get(s["species"]) or s["species"],
            "vernacularName": s["species"],
            "sex": "" if s["sex"] == "unknown" else s["sex"],
            "lifeStage": "" if s["life_stage"] == "unknown" else s["life_stage"],
            "individualCount": 1,
            "decimalLatitude": "" if s["latitude"] is None else s["latitude"],
            "decimalLongitude": "" if s["longitude"] is None else s["longitude"],
            "geodeticDatum": "EPSG:4326" if s["latitude"] is not None else "",
            "locationID": s["location"],
            "locality": s["location"],
            "identifiedBy": (f"registry ({s['scorer']}, tau {s['threshold']})" if machine and s["scorer"]
                             else "registry" if machine else "reference label" if s["method"] == "reference"
                             else "reviewer"),
            "dateIdentified": "",
            "identificationVerificationStatus": VERIFICATION[s["method"]],
            "identificationRemarks": (f"score {s['score']:.3f}" if machine and isinstance(s["score"], float) else ""),
            "associatedMedia": catalog.paths.public(s["image"]),
            "occurrenceStatus": "present",
        })
    return rows


def meta_xml() -> str:
    fields = "\n".join(f'      <field index="{i}" term="{DWC}{term}"/>' for i, term in enumerate(TERMS))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="," linesTerminatedBy="\\n" fieldsEnclosedBy='"'
        ignoreHeaderLines="1" rowType="{DWC}Occurrence">
    <files>
      <location>occurrence.csv</location>
    </files>
    <id index="0"/>
{fields}
  </core>
</archive>
"""


def eml_xml(title: str, creator: str) -> str:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1" packageId={quoteattr(title)} system="registry">
  <dataset>
    <title>{escape(title)}</title>
    <creator><organizationName>{escape(creator)}</organizationName></creator>
    <pubDate>{today}</pubDate>
    <abstract><para>Sightings of individually identified animals exported by the identity registry.</para></abstract>
  </dataset>
</eml:eml>
"""


def export(catalog: Catalog, out: Path, species: str | None = None, title: str | None = None,
           creator: str = "identity registry") -> dict[str, Any]:
    """Write the Darwin Core Archive zip; returns its path and how many occurrences it holds."""
    rows = occurrences(catalog, species)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(TERMS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(safe_row(row) for row in rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("occurrence.csv", text.getvalue())
        archive.writestr("meta.xml", meta_xml())
        archive.writestr("eml.xml", eml_xml(title or "Individual identification registry", creator))
    return {"out": str(out), "occurrences": len(rows),
            "individuals": len({r["organismID"] for r in rows})}
