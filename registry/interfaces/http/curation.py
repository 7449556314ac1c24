"""Curation over HTTP: confirm, reassign or reject a decision (review scope); merge, split and undo (admin);
attributes; the audit trail. The same `Curator` the CLI uses, run one at a time with the registry's writes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from registry.curation.curator import Curator
from registry.interfaces.http.access import Admin, Reader, Reviewer, ServiceDep

router = APIRouter()


class ReassignRequest(BaseModel):
    individual: str | None = None
    new: bool = False
    reason: str | None = None


class ReasonRequest(BaseModel):
    reason: str | None = None


class MergeRequest(BaseModel):
    keep: str
    absorb: str
    reason: str | None = None


class SplitRequest(BaseModel):
    images: list[str]
    reason: str | None = None


class AttributesRequest(BaseModel):
    """Only the attributes given change; an empty text clears nickname or notes, [] clears alternate ids."""

    sex: Literal["female", "male", "unknown"] | None = None
    life_stage: Literal["adult", "subadult", "juvenile", "unknown"] | None = None
    nickname: str | None = Field(default=None, max_length=200)
    alternate_ids: list[str] | None = Field(default=None, max_length=50)
    notes: str | None = Field(default=None, max_length=10_000)
    reason: str | None = None


@router.post("/decisions/{decision_id:rowid}/confirm")
def confirm(decision_id: int, user: Reviewer, service: ServiceDep,
            body: ReasonRequest | None = None) -> dict[str, Any]:
    return service.run(lambda r: Curator(r.stores, user.name).confirm(decision_id, body.reason if body else None))


@router.post("/decisions/{decision_id:rowid}/reassign")
def reassign(decision_id: int, user: Reviewer, service: ServiceDep, body: ReassignRequest) -> dict[str, Any]:
    return service.run(lambda r: Curator(r.stores, user.name).reassign(decision_id, body.individual, body.new,
                                                                      body.reason))


@router.post("/decisions/{decision_id:rowid}/reject")
def reject(decision_id: int, user: Reviewer, service: ServiceDep,
           body: ReasonRequest | None = None) -> dict[str, Any]:
    return service.run(lambda r: Curator(r.stores, user.name).reject(decision_id, body.reason if body else None))


@router.post("/individuals/merge")
def merge(user: Admin, service: ServiceDep, body: MergeRequest) -> dict[str, Any]:
    return service.run(lambda r: Curator(r.stores, user.name).merge(body.keep, body.absorb, body.reason))


@router.post("/individuals/{code}/split")
def split(code: str, user: Admin, service: ServiceDep, body: SplitRequest) -> dict[str, Any]:
    return service.run(lambda r: Curator(r.stores, user.name).split(code, body.images, body.reason))


@router.post("/individuals/{code}/attributes")
def edit_attributes(code: str, user: Reviewer, service: ServiceDep, body: AttributesRequest) -> dict[str, Any]:
    values = body.model_dump(exclude={"reason"})
    return service.run(lambda r: Curator(r.stores, user.name).edit(code, body.reason, **values))


@router.post("/changes/{change_id:rowid}/undo")
def undo(change_id: int, user: Admin, service: ServiceDep, body: ReasonRequest | None = None) -> dict[str, Any]:
    return service.run(lambda r: Curator(r.stores, user.name).undo(change_id, body.reason if body else None))


@router.get("/changes")
def changes(_: Reader, service: ServiceDep,
            limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
    return Curator.changes_in(service.reads, limit)
