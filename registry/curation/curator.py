"""Curation by people: confirm, reassign or reject an automatic decision; merge two individuals; split one;
edit an individual's attributes; undo any of these. Nothing is deleted, and every change is written to the
`changes` audit table with the rows before and after, so `undo` restores exactly what was there.

Write order: one SQL transaction (rows + audit entry), then the vector payloads of the affected annotations. SQL is
the truth: a crash between the two leaves payloads that `registry doctor --repair` rewrites from SQL.
"""

from __future__ import annotations

import getpass
import os
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.store import crashpoints
from registry.store.catalog import Catalog, CatalogError
from registry.store.stores import Stores
from registry.store.tables import (
    LIFE_STAGES,
    SEXES,
    Annotation,
    Change,
    Decision,
    DistinctPair,
    Individual,
    Sighting,
)

ATTRIBUTES = ("sex", "life_stage", "nickname", "alternate_ids", "notes")
# the longest text each attribute may hold: a nickname fits its column (and a page), notes a long paragraph
MAX_LENGTH = {"nickname": 200, "notes": 10_000, "alternate_id": 200}
MAX_ALTERNATE_IDS = 50


class CurationError(CatalogError):
    pass


def default_actor() -> str:
    return os.environ.get("REGISTRY_ACTOR") or getpass.getuser()


def _sighting_state(s: Sighting) -> dict[str, Any]:
    return {"id": s.id, "annotation_id": s.annotation_id, "individual_id": s.individual_id, "method": s.method,
            "status": s.status}


def _same_sighting(state: dict[str, Any], recorded: dict[str, Any]) -> bool:
    """Whether a sighting is as a change left it (changes recorded before annotations name the photo instead)."""
    keys = ("id", "individual_id", "method", "status")
    return all(state[k] == recorded[k] for k in keys)


def _touched(change: Change) -> tuple[set[int], set[int]]:
    """The sighting ids and individual ids a change's before and after records name."""
    sightings: set[int] = set()
    individuals: set[int] = set()
    for record in (change.before or {}, change.after or {}):
        for sighting in record.get("sightings", []):
            sightings.add(sighting["id"])
            if sighting.get("individual_id") is not None:
                individuals.add(sighting["individual_id"])
        for name in ("individuals", "attributes"):
            individuals.update(row["id"] for row in record.get(name, []) if row.get("id") is not None)
    return sightings, individuals


def _individual_state(i: Individual) -> dict[str, Any]:
    return {"id": i.id, "code": i.code, "merged_into_id": i.merged_into_id,
            "retired_at": i.retired_at.isoformat() if i.retired_at else None}


def _restore_individual(i: Individual, state: dict[str, Any]) -> None:
    """Restore the merge link a change altered. Retirement is not restored from the record (it may be stale):
    it follows from the sightings, by `Catalog.reconcile_retired`, after every change."""
    i.merged_into_id = state["merged_into_id"]


def _attribute_state(i: Individual) -> dict[str, Any]:
    return {"id": i.id, **{name: getattr(i, name) for name in ATTRIBUTES}}


def _decision_sightings(session: Session, decision_id: int) -> tuple[Decision, list[Sighting]]:
    """A decision and its sightings: one, or one per annotation of an animal decided jointly over an event."""
    decision = session.get(Decision, decision_id)
    if decision is None:
        raise CurationError(f"no decision {decision_id}")
    sightings = list(session.scalars(select(Sighting).where(Sighting.decision_id == decision_id)
                                     .order_by(Sighting.id)))
    if not sightings:  # recorded before sightings named their decision
        sightings = list(session.scalars(select(Sighting).where(Sighting.annotation_id == decision.annotation_id)))
    if not sightings:
        raise CurationError(f"decision {decision_id} was never recorded as a sighting")
    return decision, sightings


class Curator:
    """The curation commands over a registry's stores (CLI and HTTP API use the same object). No model is
    loaded: the vectors' collections are the ones recorded in the `embedders` table."""

    def __init__(self, stores: Stores, actor: str | None = None) -> None:
        self.stores = stores
        self.catalog = stores.catalog
        self.actor = actor or default_actor()

    # --- the write path -----------------------------------------------------------------------------------
    def _record(self, session: Session, kind: str, summary: str, reason: str | None,
                before: dict[str, Any], after: dict[str, Any], undoes: Change | None = None) -> Change:
        change = Change(kind=kind, actor=self.actor, reason=reason, summary=summary, before=before, after=after,
                        undoes_id=undoes.id if undoes else None)
        session.add(change)
        session.flush()
        if undoes is not None:
            undoes.undone_by_id = change.id
        return change

    def _sync_payloads(self, annotation_ids: list[int]) -> None:
        """Make the vectors' payloads say what SQL now says about these annotations, and make that durable.
        Serialised across processes: SQL is read inside the lock, so a payload written here was read after every
        curation committed before it (a concurrent split's payloads are never overwritten by older ones)."""
        with self.catalog.serialised("vector-payloads"):
            states = self.catalog.annotation_states(annotation_ids)
            by_individual: dict[int | None, list[int]] = {}
            for annotation_id, state in states.items():
                by_individual.setdefault(state["individual_id"], []).append(annotation_id)
            for collection in self.stores.registered_collections().values():
                for individual_id, ids in by_individual.items():
                    self.stores.index.set_individual(collection, ids, individual_id)
            self.stores.index.flush()

    def _reconcile(self, session: Session, individual_ids: set[int], before: dict[str, Any],
                   after: dict[str, Any]) -> list[str]:
        """Retire the individuals this change left without an active sighting and bring back those it gave one
        (`Catalog.reconcile_retired`), recorded in the change; returns the codes retired now."""
        individual_ids = {i for i in individual_ids if i is not None}
        states = {i.id: _individual_state(i) for i in session.scalars(
            select(Individual).where(Individual.id.in_(individual_ids)))}
        retired = []
        for individual, now_retired in self.catalog.reconcile_retired(session, individual_ids):
            recorded = before.setdefault("individuals", [])
            if all(r["id"] != individual.id for r in recorded):
                recorded.append(states[individual.id])
            after["individuals"] = [r for r in after.get("individuals", []) if r["id"] != individual.id]
            after["individuals"].append(_individual_state(individual))
            if now_retired:
                retired.append(individual.code)
        return retired

    def _result(self, change: Change, annotation_ids: list[int]) -> dict[str, Any]:
        crashpoints.reached("curation-after-sql")
        self._sync_payloads(annotation_ids)
        return {"change": change.id, "kind": change.kind, "summary": change.summary,
                "annotations": len(annotation_ids)}

    # --- decisions ----------------------------------------------------------------------------------------
    def confirm(self, decision_id: int, reason: str | None = None) -> dict[str, Any]:
        with self.catalog.transaction() as session:
            _, sightings = _decision_sightings(session, decision_id)
            sighting = sightings[0]
            if sighting.status != "active":
                raise CurationError(f"decision {decision_id}'s sighting was rejected; reassign it instead")
            if sighting.method in ("confirmed", "corrected", "reference"):
                raise CurationError(f"decision {decision_id} is already {sighting.method}")
            before = {"sightings": [_sighting_state(s) for s in sightings]}
            for s in sightings:
                s.method = "confirmed"
            crashpoints.reached("curation-in-sql")
            code = session.get(Individual, sighting.individual_id).code  # type: ignore[union-attr]
            change = self._record(session, "confirm", f"confirmed decision {decision_id} ({code})", reason,
                                  before, {"sightings": [_sighting_state(s) for s in sightings]})
            annotation_ids = [s.annotation_id for s in sightings]
        return self._result(change, annotation_ids)

    def reassign(self, decision_id: int, individual: str | None = None, new: bool = False,
                 reason: str | None = None) -> dict[str, Any]:
        if new == (individual is not None):
            raise CurationError("give either an individual or --new")
        with self.catalog.transaction() as session:
            decision, sightings = _decision_sightings(session, decision_id)
            sighting = sightings[0]
            annotation = session.get(Annotation, decision.annotation_id)
            before: dict[str, Any] = {"sightings": [_sighting_state(s) for s in sightings]}
            created: list[int] = []
            if new:
                target = self.catalog.new_individual(session, annotation.species)  # type: ignore[union-attr]
                session.flush()
                created.append(target.id)
            else:
                target = self.catalog.resolve(session, individual)  # type: ignore[arg-type]
                if target.species != annotation.species:  # type: ignore[union-attr]
                    raise CurationError(f"{target.code} is a {target.species}, the photo a "
                                        f"{annotation.species}")  # type: ignore[union-attr]
            old = session.get(Individual, sighting.individual_id)
            previous = {s.individual_id for s in sightings}
            for s in sightings:
                s.individual_id, s.method, s.status = target.id, "corrected", "active"
            session.flush()
            crashpoints.reached("curation-in-sql")
            after: dict[str, Any] = {"sightings": [_sighting_state(s) for s in sightings], "created": created}
            retired = self._reconcile(session, previous | {target.id}, before, after)
            change = self._record(session, "reassign",
                                  f"decision {decision_id}: {old.code if old else '?'} -> {target.code}", reason,
                                  before, after)
            annotation_ids = [s.annotation_id for s in sightings]
        return {**self._result(change, annotation_ids), "individual": target.code, "retired": retired}

    def reject(self, decision_id: int, reason: str | None = None) -> dict[str, Any]:
        with self.catalog.transaction() as session:
            _, sightings = _decision_sightings(session, decision_id)
            if sightings[0].status == "rejected":
                raise CurationError(f"decision {decision_id} is already rejected")
            before: dict[str, Any] = {"sightings": [_sighting_state(s) for s in sightings]}
            for s in sightings:
                s.status = "rejected"
            session.flush()
            crashpoints.reached("curation-in-sql")
            after: dict[str, Any] = {"sightings": [_sighting_state(s) for s in sightings]}
            retired = self._reconcile(session, {s.individual_id for s in sightings}, before, after)
            change = self._record(session, "reject", f"rejected decision {decision_id}", reason, before, after)
            annotation_ids = [s.annotation_id for s in sightings]
        return {**self._result(change, annotation_ids), "retired": retired}

    # --- individuals --------------------------------------------------------------------------------------
    def declare_distinct(self, first: str, second: str, reason: str | None = None) -> dict[str, Any]:
        """Record that two individuals are different animals: the duplicates check never proposes them again.
        A row of its own (who, when, why); touches no sighting and nothing in the vector index."""
        with self.catalog.transaction() as session:
            a, b = self.catalog.resolve(session, first), self.catalog.resolve(session, second)
            if a.id == b.id:
                raise CurationError(f"{first} and {second} are the same individual ({a.code})")
            low, high = sorted((a.id, b.id))
            known = session.scalar(select(DistinctPair).where(DistinctPair.first_id == low,
                                                              DistinctPair.second_id == high))
            if known is None:
                session.add(DistinctPair(first_id=low, second_id=high, actor=self.actor, reason=reason))
        return {"distinct": sorted((a.code, b.code)), "already": known is not None}

    def merge(self, keep: str, absorb: str, reason: str | None = None) -> dict[str, Any]:
        """`absorb`'s sightings move to `keep`; `absorb` stays, merged into `keep`, and resolves to it."""
        with self.catalog.transaction() as session:
            kept = self.catalog.resolve(session, keep)
            absorbed = session.scalar(select(Individual).where(Individual.code == absorb)) or \
                self.catalog.resolve(session, absorb)
            if absorbed.merged_into_id is not None:
                into = self.catalog.resolve(session, absorbed.code)
                raise CurationError(f"{absorbed.code} is already merged into {into.code}")
            if absorbed.id == kept.id:
                raise CurationError(f"{keep} and {absorb} are the same individual ({kept.code})")
            if absorbed.species != kept.species:
                raise CurationError(f"cannot merge a {absorbed.species} into a {kept.species}")
            locked = self.catalog.lock_individuals(session, [kept.id, absorbed.id])
            if any(locked[i].merged_into_id is not None for i in (kept.id, absorbed.id)):
                raise CurationError(f"{kept.code} or {absorbed.code} was merged by someone else meanwhile; "
                                    "nothing was changed (look again, then retry)")
            moving = list(session.scalars(select(Sighting).where(Sighting.individual_id == absorbed.id)))
            before: dict[str, Any] = {"sightings": [_sighting_state(s) for s in moving],
                                      "individuals": [_individual_state(absorbed)]}
            for sighting in moving:
                sighting.individual_id = kept.id
            absorbed.merged_into_id = kept.id
            crashpoints.reached("curation-in-sql")
            after: dict[str, Any] = {"sightings": [_sighting_state(s) for s in moving],
                                     "individuals": [_individual_state(absorbed)]}
            self._reconcile(session, {kept.id}, before, after)
            change = self._record(session, "merge", f"merged {absorbed.code} into {kept.code}", reason, before,
                                  after)
            annotation_ids = [s.annotation_id for s in moving]
        return self._result(change, annotation_ids)

    def split(self, individual: str, images: list[str], reason: str | None = None) -> dict[str, Any]:
        """Move the sightings of these annotations (annotation ids, or photos' paths or sha256 when a photo holds
        one animal) to a new individual."""
        with self.catalog.transaction() as session:
            source = self.catalog.resolve(session, individual)
            annotation_ids = [self._annotation_id(session, key) for key in images]
            moving = list(session.scalars(select(Sighting).where(Sighting.annotation_id.in_(annotation_ids))))
            strangers = [s.annotation_id for s in moving if s.individual_id != source.id]
            if strangers or len(moving) != len(set(annotation_ids)):
                raise CurationError(f"annotations {strangers or annotation_ids} are not sightings of {source.code}")
            remaining = session.scalar(select(Sighting.id).where(Sighting.individual_id == source.id,
                                                                 Sighting.status == "active",
                                                                 Sighting.annotation_id.not_in(annotation_ids)))
            if remaining is None:
                raise CurationError(f"that would move every active sighting of {source.code}; nothing to split "
                                    "(reassign the decision instead)")
            before: dict[str, Any] = {"sightings": [_sighting_state(s) for s in moving]}
            target = self.catalog.new_individual(session, source.species)
            session.flush()
            for sighting in moving:
                sighting.individual_id = target.id
            crashpoints.reached("curation-in-sql")
            after: dict[str, Any] = {"sightings": [_sighting_state(s) for s in moving], "created": [target.id]}
            self._reconcile(session, {source.id, target.id}, before, after)
            change = self._record(session, "split", f"split {len(moving)} sightings of {source.code} into "
                                  f"{target.code}", reason, before, after)
        return {**self._result(change, annotation_ids), "individual": target.code}

    def _annotation_id(self, session: Session, key: str) -> int:
        try:
            return self.catalog.annotation_by_key(session, key).id
        except CatalogError as exc:
            raise CurationError(str(exc)) from exc

    # --- attributes ---------------------------------------------------------------------------------------
    def edit(self, individual: str, reason: str | None = None, **attributes: Any) -> dict[str, Any]:
        """Set an individual's attributes (sex, life stage, nickname, alternate ids, notes); an empty text clears
        one. Audited and undoable like every curation; the vectors are not touched."""
        unknown = set(attributes) - set(ATTRIBUTES)
        if unknown:
            raise CurationError(f"unknown attribute(s) {', '.join(sorted(unknown))}; known: {', '.join(ATTRIBUTES)}")
        values = {k: v for k, v in attributes.items() if v is not None}
        if not values:
            raise CurationError(f"nothing to edit: give at least one of {', '.join(ATTRIBUTES)}")
        if values.get("sex") is not None and values["sex"] not in SEXES:
            raise CurationError(f"sex {values['sex']!r} is not one of {', '.join(SEXES)}")
        if values.get("life_stage") is not None and values["life_stage"] not in LIFE_STAGES:
            raise CurationError(f"life stage {values['life_stage']!r} is not one of {', '.join(LIFE_STAGES)}")
        if "alternate_ids" in values:
            ids = values["alternate_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) and i.strip() for i in ids):
                raise CurationError("alternate ids must be a list of non-empty texts")
            if len(ids) > MAX_ALTERNATE_IDS or any(len(i.strip()) > MAX_LENGTH["alternate_id"] for i in ids):
                raise CurationError(f"at most {MAX_ALTERNATE_IDS} alternate ids of at most "
                                    f"{MAX_LENGTH['alternate_id']} characters each")
            values["alternate_ids"] = sorted({i.strip() for i in ids}) or None
        for name in ("nickname", "notes"):
            if name in values:
                values[name] = str(values[name]).strip() or None
                if values[name] is not None and len(values[name]) > MAX_LENGTH[name]:
                    raise CurationError(f"the {name.replace('_', ' ')} is {len(values[name])} characters long; "
                                        f"at most {MAX_LENGTH[name]}")
        with self.catalog.transaction() as session:
            target = self.catalog.resolve(session, individual)
            before = _attribute_state(target)
            for name, value in values.items():
                setattr(target, name, value)
            after = _attribute_state(target)
            if after == before:
                raise CurationError(f"{target.code} already has these attributes")
            changed = ", ".join(f"{k} {after[k]!r}" for k in ATTRIBUTES if after[k] != before[k])
            change = self._record(session, "edit", f"edited {target.code}: {changed}", reason,
                                  {"attributes": [before]}, {"attributes": [after]})
        return {**self._result(change, []), "individual": target.code,
                "attributes": {k: after[k] for k in ATTRIBUTES}}

    # --- undo ---------------------------------------------------------------------------------------------
    def undo(self, change_id: int, reason: str | None = None) -> dict[str, Any]:
        """Restore the rows a change touched, if nothing changed them since."""
        with self.catalog.transaction() as session:
            change = session.get(Change, change_id)
            if change is None:
                raise CurationError(f"no change {change_id}")
            if change.kind == "undo":
                raise CurationError(f"change {change_id} is itself an undo")
            if change.undone_by_id is not None:
                raise CurationError(f"change {change_id} was already undone by change {change.undone_by_id}")
            current_sightings = {s.id: s for s in session.scalars(
                select(Sighting).where(Sighting.id.in_([s["id"] for s in change.after.get("sightings", [])])))}
            for after in change.after.get("sightings", []):
                if not _same_sighting(_sighting_state(current_sightings[after["id"]]), after):
                    raise CurationError(f"sighting {after['id']} changed after change {change_id}; "
                                        "undo the later change first")
            undo_before: dict[str, Any] = {"sightings": [_sighting_state(s) for s in current_sightings.values()],
                                           "individuals": []}
            attributes_after = []
            for after in change.after.get("attributes", []):
                edited = session.get(Individual, after["id"])
                if _attribute_state(edited) != after:  # type: ignore[arg-type]
                    raise CurationError(f"{edited.code} was edited again after change {change_id}; "  # type: ignore[union-attr]
                                        "undo the later change first")
            for state in change.before.get("attributes", []):
                edited = session.get(Individual, state["id"])
                undo_before.setdefault("attributes", []).append(_attribute_state(edited))  # type: ignore[arg-type]
                for name in ATTRIBUTES:
                    setattr(edited, name, state[name])
                attributes_after.append(_attribute_state(edited))  # type: ignore[arg-type]
            for state in change.after.get("individuals", []):
                individual = session.get(Individual, state["id"])
                if individual is not None and individual.merged_into_id != state["merged_into_id"]:
                    raise CurationError(f"{individual.code} was merged or unmerged after change {change_id}; "
                                        "undo the later change first")
            for state in change.before.get("sightings", []):
                sighting = current_sightings[state["id"]]
                sighting.individual_id, sighting.method, sighting.status = (
                    state["individual_id"], state["method"], state["status"])
            for state in change.before.get("individuals", []):
                individual = session.get(Individual, state["id"])
                if all(r["id"] != state["id"] for r in undo_before["individuals"]):
                    undo_before["individuals"].append(_individual_state(individual))  # type: ignore[arg-type]
                _restore_individual(individual, state)  # type: ignore[arg-type]
            for state in change.before.get("sightings", []):  # photos go back only to an individual that is one
                owner = session.get(Individual, state["individual_id"])
                if owner is not None and owner.merged_into_id is not None:
                    raise CurationError(f"{owner.code} was merged into another individual after change "
                                        f"{change_id}; undo that merge first")
            crashpoints.reached("curation-in-sql")
            retired = []
            followers: list[int] = []
            for created_id in change.after.get("created", []):
                # an individual made by the undone change keeps its row and code, and now resolves to where
                # its photos went back to; photos matched to it in the meantime follow it there
                created = session.get(Individual, created_id)
                back_to = {s["individual_id"] for s in change.before.get("sightings", [])}
                if created is not None and len(back_to) == 1 and created_id not in back_to:
                    undo_before["individuals"].append(_individual_state(created))
                    target = back_to.pop()
                    created.merged_into_id = target
                    retired.append(_individual_state(created))
                    # what it holds now (photos matched to it, an individual merged into it) moves with it, as a
                    # merge moves them: a merged individual keeps no active sighting
                    for held in session.scalars(select(Sighting).where(Sighting.individual_id == created_id)):
                        if held.id not in current_sightings:
                            undo_before["sightings"].append(_sighting_state(held))
                            current_sightings[held.id] = held
                        held.individual_id = target
                        followers.append(held.annotation_id)
            touched = ({s["individual_id"] for s in change.before.get("sightings", [])}
                       | {s["individual_id"] for s in change.after.get("sightings", [])}
                       | {i["id"] for i in undo_before["individuals"]}
                       | {i for i in change.after.get("created", [])})
            after: dict[str, Any] = {}
            self._reconcile(session, touched, undo_before, after)
            after = {"sightings": [_sighting_state(s) for s in current_sightings.values()],
                     "individuals": [_individual_state(session.get(Individual, i["id"]))  # type: ignore[arg-type]
                                     for i in undo_before["individuals"]]}
            if attributes_after:
                after["attributes"] = attributes_after
            record = self._record(session, "undo", f"undid change {change_id} ({change.summary})", reason,
                                  undo_before, after, undoes=change)
            annotation_ids = sorted({s.annotation_id for s in current_sightings.values()} | set(followers))
        return {**self._result(record, annotation_ids), "retired": [r["code"] for r in retired]}

    def changes(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.changes_in(self.catalog, limit)

    @staticmethod
    def changes_in(catalog: Catalog, limit: int = 50, kind: str | None = None, actor: str | None = None,
                   individual: str | None = None, since: datetime | None = None,
                   until: datetime | None = None) -> list[dict[str, Any]]:
        """The audit trail, newest first (a read: no vector index needed), optionally of one kind, by one person,
        touching one individual (by its code) or within [since, until); each change names the decisions and
        individuals it touched, for links."""
        query = select(Change).order_by(Change.id.desc())
        if kind:
            query = query.where(Change.kind == kind)
        if actor:
            query = query.where(Change.actor == actor)
        if since is not None:
            query = query.where(Change.created_at >= since)
        if until is not None:
            query = query.where(Change.created_at < until)
        with catalog.transaction() as session:
            wanted = None
            if individual:
                wanted = session.scalar(select(Individual.id).where(Individual.code == individual))
                if wanted is None:
                    return []
            rows = list(session.scalars(query.limit(limit if wanted is None else limit * 20)))
            touched = {c.id: _touched(c) for c in rows}
            if wanted is not None:
                rows = [c for c in rows if wanted in touched[c.id][1]][:limit]
            sighting_ids = {s for c in rows for s in touched[c.id][0]}
            individual_ids = {i for c in rows for i in touched[c.id][1]}
            decisions = dict(session.execute(select(Sighting.id, Sighting.decision_id)
                                             .where(Sighting.id.in_(sighting_ids))).all()) if sighting_ids else {}
            codes = dict(session.execute(select(Individual.id, Individual.code)
                                         .where(Individual.id.in_(individual_ids))).all()) if individual_ids else {}
            return [{"id": c.id, "kind": c.kind, "actor": c.actor, "when": c.created_at.isoformat(timespec="seconds"),
                     "summary": c.summary, "reason": c.reason, "undone_by": c.undone_by_id,
                     "decisions": sorted({decisions[s] for s in touched[c.id][0] if decisions.get(s)}),
                     "individuals": sorted({codes[i] for i in touched[c.id][1] if i in codes})} for c in rows]
