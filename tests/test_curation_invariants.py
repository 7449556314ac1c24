"""Curation invariants under any sequence of operations (Hypothesis stateful testing on a real catalog and a
real Qdrant Edge index), curation faults, and concurrent merges on PostgreSQL.

After every confirm, reassign, reassign --new, reject, merge, split and undo, in any order:
- an individual (not merged into another) is retired exactly when it has no active sighting;
- every vector payload names the individual SQL resolves the annotation to (None for a rejected sighting);
- merge chains have no cycle;
- `stats` counts what the sightings export holds (sightings, and the individuals they resolve to);
- an operation that is refused changes nothing.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import init_registry, run_cli, season_copy
from hypothesis import HealthCheck, settings, strategies
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import select

from registry.curation import exports
from registry.curation.curator import CurationError, Curator
from registry.ingest import doctor
from registry.ingest.ingestion import Ingestor
from registry.matching.pipeline import Pipeline
from registry.services.registry import Registry
from registry.settings import Settings
from registry.store import crashpoints
from registry.store.catalog import follow_merges
from registry.store.crashpoints import InjectedFault
from registry.store.stores import Stores
from registry.store.tables import Change, Decision, Individual, Sighting

BASE: dict[str, Path] = {}


@pytest.fixture(scope="module")
def curated_base(tmp_path_factory: pytest.TempPathFactory, population: Path, offline_pipeline: Pipeline) -> Path:
    """6 labelled photos and 4 identified ones (decisions to curate), made once, copied by every example."""
    root = tmp_path_factory.mktemp("curation-base")
    references = season_copy(population, 1, root / "s1", count=6)
    queries = season_copy(population, 2, root / "s2", count=4)
    home = root / "reg"
    init_registry(home)
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(references, "s1", "reference")
        Ingestor(registry).ingest(queries, "s2", "identify")
    BASE["home"] = home
    return home


def _sql_state(stores: Stores) -> tuple:
    with stores.catalog.transaction() as session:
        sightings = sorted((s.id, s.individual_id, s.method, s.status) for s in session.scalars(select(Sighting)))
        individuals = sorted((i.id, i.merged_into_id, i.retired_at is not None)
                             for i in session.scalars(select(Individual)))
        changes = sorted((c.id, c.undone_by_id) for c in session.scalars(select(Change)))
    return sightings, individuals, changes


def check_invariants(stores: Stores) -> None:
    catalog = stores.catalog
    with catalog.transaction() as session:
        individuals = list(session.scalars(select(Individual)))
        active = set(session.scalars(select(Sighting.individual_id).where(Sighting.status == "active")))
        merged = catalog.merge_links(session)
        for individual in individuals:
            follow_merges(individual.id, merged.get)  # raises on a cycle
            if individual.merged_into_id is None:
                assert (individual.retired_at is not None) == (individual.id not in active), (
                    f"{individual.code}: retired={individual.retired_at}, active sightings: "
                    f"{individual.id in active}")
            else:
                assert individual.id not in active, f"{individual.code} is merged but keeps active sightings"
    states = catalog.annotation_states()
    for collection in stores.registered_collections().values():
        for annotation_id, payload in stores.index.payloads(collection):
            assert payload.get("individual_id") == states[annotation_id]["individual_id"], (
                f"annotation {annotation_id}: payload {payload.get('individual_id')}, SQL "
                f"{states[annotation_id]['individual_id']}")
    rows = list(exports.sightings(catalog))
    stats = catalog.stats()
    assert stats["sightings"] == len(rows)
    assert stats["individuals"] == len({row["individual"] for row in rows})


class CurationMachine(RuleBasedStateMachine):
    """Random curation on a copy of the base registry; refusals are allowed and must change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="curation-machine-"))
        shutil.copytree(BASE["home"], self.root / "reg")
        self.stores = Stores(Settings.load(self.root / "reg"), write=True)
        self.curator = Curator(self.stores, actor="hypothesis")

    def teardown(self) -> None:
        self.stores.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- what there is to choose from ----------------------------------------------------------------------
    def _decisions(self) -> list[int]:
        with self.stores.catalog.transaction() as session:
            return list(session.scalars(select(Decision.id).order_by(Decision.id)))

    def _codes(self) -> list[str]:
        with self.stores.catalog.transaction() as session:
            return list(session.scalars(select(Individual.code).order_by(Individual.id)))

    def _changes(self) -> list[int]:
        with self.stores.catalog.transaction() as session:
            return list(session.scalars(select(Change.id).order_by(Change.id.desc())))

    def _sightings_of(self, code: str) -> list[int]:
        with self.stores.catalog.transaction() as session:
            individual = session.scalar(select(Individual).where(Individual.code == code))
            return list(session.scalars(select(Sighting.annotation_id).where(
                Sighting.individual_id == individual.id).order_by(Sighting.annotation_id)))

    @staticmethod
    def _pick(items: list, k: int) -> object | None:
        return items[k % len(items)] if items else None

    def _attempt(self, operation, *args) -> None:  # type: ignore[no-untyped-def]
        before = _sql_state(self.stores)
        try:
            operation(*args)
        except CurationError:
            assert _sql_state(self.stores) == before, f"a refused {operation.__name__}{args} changed rows"

    # --- the operations ------------------------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        check_invariants(self.stores)

    @rule(k=strategies.integers(0, 99))
    def confirm(self, k: int) -> None:
        if (decision := self._pick(self._decisions(), k)) is not None:
            self._attempt(self.curator.confirm, decision)

    @rule(k=strategies.integers(0, 99), j=strategies.integers(0, 99))
    def reassign(self, k: int, j: int) -> None:
        decision, code = self._pick(self._decisions(), k), self._pick(self._codes(), j)
        if decision is not None and code is not None:
            self._attempt(self.curator.reassign, decision, code)

    @rule(k=strategies.integers(0, 99))
    def reassign_new(self, k: int) -> None:
        if (decision := self._pick(self._decisions(), k)) is not None:
            self._attempt(lambda d: self.curator.reassign(d, new=True), decision)

    @rule(k=strategies.integers(0, 99))
    def reject(self, k: int) -> None:
        if (decision := self._pick(self._decisions(), k)) is not None:
            self._attempt(self.curator.reject, decision)

    @rule(a=strategies.integers(0, 99), b=strategies.integers(0, 99))
    def merge(self, a: int, b: int) -> None:
        codes = self._codes()
        if codes:
            self._attempt(self.curator.merge, self._pick(codes, a), self._pick(codes, b))

    @rule(k=strategies.integers(0, 99), mask=strategies.integers(1, 255))
    def split(self, k: int, mask: int) -> None:
        code = self._pick(self._codes(), k)
        if code is None:
            return
        annotations = self._sightings_of(code)  # type: ignore[arg-type]
        chosen = [str(a) for n, a in enumerate(annotations) if mask >> n & 1]
        if chosen:
            self._attempt(self.curator.split, code, chosen)

    @rule(k=strategies.integers(0, 3))
    def undo(self, k: int) -> None:  # mostly the latest changes, as people undo
        if (change := self._pick(self._changes(), k)) is not None:
            self._attempt(self.curator.undo, change)

    @invariant()
    def holds(self) -> None:
        check_invariants(self.stores)


@pytest.mark.usefixtures("curated_base")
def test_curation_invariants_hold_after_any_sequence_of_operations() -> None:
    runner = CurationMachine.TestCase()
    runner.settings = settings(max_examples=30, stateful_step_count=15, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])
    runner.runTest()


@pytest.mark.usefixtures("curated_base")
def test_undoing_a_split_whose_new_individual_absorbed_another_moves_what_it_holds() -> None:
    """The sequence Hypothesis found (2026-12-04): a split makes an individual, a later merge keeps it and
    absorbs another, then the split is undone. The split's individual is retired into the one its photo went back
    to; the photos it held through the merge go with it (they had stayed, active, on a merged individual)."""
    machine = CurationMachine()
    try:
        machine.start()
        machine.reassign_new(k=0)
        machine.holds()
        machine.split(k=1, mask=1)
        machine.holds()
        machine.reject(k=0)
        machine.holds()
        machine.merge(a=26, b=0)
        machine.holds()
        machine.undo(k=2)
        machine.holds()
        machine.undo(k=0)  # and the undo itself can be undone, back to where the merge left things
        machine.holds()
    finally:
        machine.teardown()


# --- faults in curation -----------------------------------------------------------------------------------------
OPERATIONS = ("confirm", "reassign", "reassign-new", "reject", "merge", "split", "undo")


def _operate(curator: Curator, stores: Stores, name: str) -> None:
    with stores.catalog.transaction() as session:
        decisions = list(session.scalars(select(Decision).order_by(Decision.id)))
        codes = [i.code for i in session.scalars(select(Individual).where(Individual.merged_into_id.is_(None),
                                                                           Individual.retired_at.is_(None))
                                                 .order_by(Individual.id))]
        decision = decisions[0]
        owner = session.get(Individual, decision.individual_id).code
        other = next(c for c in codes if c != owner)
    if name == "confirm":
        curator.confirm(decision.id)
    elif name == "reassign":
        curator.reassign(decision.id, other)
    elif name == "reassign-new":
        curator.reassign(decision.id, new=True)
    elif name == "reject":
        curator.reject(decision.id)
    elif name == "merge":
        curator.merge(owner, other)
    elif name == "split":
        with stores.catalog.transaction() as session:
            individual = session.scalar(select(Individual).where(Individual.code == other))
            annotations = list(session.scalars(select(Sighting.annotation_id).where(
                Sighting.individual_id == individual.id, Sighting.status == "active")))
        if len(annotations) > 1:
            curator.split(other, [str(annotations[0])])
        else:  # nothing to split off: a merge is the individual-level change left
            curator.merge(other, owner)


@pytest.mark.parametrize("point", crashpoints.CURATION_POINTS)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_an_exception_in_any_curation_leaves_sql_whole_and_doctor_repairs_the_payloads(
    curated_base: Path, tmp_path: Path, offline_pipeline: Pipeline, operation: str, point: str,
) -> None:
    home = tmp_path / "reg"
    shutil.copytree(curated_base, home)
    stores = Stores(Settings.load(home), write=True)
    try:
        curator = Curator(stores, actor="tester")
        if operation == "undo":  # the fault hits the undo, not the change it undoes
            with stores.catalog.transaction() as session:
                decision = session.scalar(select(Decision).order_by(Decision.id))
                owner = session.get(Individual, decision.individual_id).code
                other = session.scalar(select(Individual.code).where(Individual.code != owner,
                                                                     Individual.merged_into_id.is_(None)))
            change = curator.reassign(decision.id, other)["change"]
            before = _sql_state(stores)
            with crashpoints.armed(point), pytest.raises(InjectedFault):
                curator.undo(change)
        else:
            before = _sql_state(stores)
            with crashpoints.armed(point), pytest.raises(InjectedFault):
                _operate(curator, stores, operation)
        after = _sql_state(stores)
        if point == "curation-in-sql":
            assert after == before  # rolled back whole, audit entry included
        else:
            assert after != before  # committed: only the payloads are behind
    finally:
        stores.close()
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        report = doctor.check(registry, repair=True)
        assert report["unrepaired"] == 0
        assert doctor.check(registry)["consistent"]
    stores = Stores(Settings.load(home), write=True)
    try:
        check_invariants(stores)
    finally:
        stores.close()


# --- concurrent merges on PostgreSQL ------------------------------------------------------------------------------
def _merge_in_process(data_dir: str, database_url: str, keep: str, absorb: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    import os

    os.environ["REGISTRY_PAUSE_AT"] = "curation-in-sql:1.0"  # both transactions are open at once
    settings = Settings.load(Path(data_dir), database_url=database_url)
    stores = Stores(settings, write=True)
    try:
        barrier.wait()
        try:
            Curator(stores, actor=f"merge {absorb} into {keep}").merge(keep, absorb)
            results.put("merged")
        except CurationError as exc:
            results.put(f"refused: {exc}")
    finally:
        stores.close()


def test_concurrent_merges_a_into_b_and_b_into_a_never_make_a_cycle(
    database_url: str, tmp_path: Path, population: Path, offline_pipeline: Pipeline,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite registries have one writing process (the writer lock); this is PostgreSQL's case")
    home = tmp_path / "reg"
    references = season_copy(population, 1, tmp_path / "s1", count=4)
    Registry.init(Settings.for_profile("offline", data_dir=home, database_url=database_url))
    with Registry(Settings.load(home, database_url=database_url), pipeline=offline_pipeline) as registry:
        Ingestor(registry).ingest(references, "s1", "reference")
        first, second = [i["code"] for i in registry.catalog.individuals()[:2]]
    twin = tmp_path / "reg2"  # the second process's own copy of the embedded vectors (one writer per folder)
    shutil.copytree(home, twin)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_merge_in_process, args=(str(path), database_url, keep, absorb, barrier,
                                                               results))
               for path, keep, absorb in ((home, first, second), (twin, second, first))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes[0] == "merged" and outcomes[1].startswith("refused"), outcomes
    stores = Stores(Settings.load(home, database_url=database_url), write=False)
    try:
        with stores.catalog.transaction() as session:
            merged = stores.catalog.merge_links(session)
        for individual in merged:
            follow_merges(individual, merged.get)
        assert len(merged) == 1
    finally:
        stores.close()


@pytest.mark.parametrize("point", ["curation-in-sql", "curation-after-sql"])
@pytest.mark.parametrize("command", ["reject", "reassign-new", "merge", "split"])
def test_a_curation_command_killed_at_every_point_leaves_a_registry_doctor_makes_consistent(
    curated_base: Path, tmp_path: Path, offline_pipeline: Pipeline, command: str, point: str,
) -> None:
    """`kill -9` of a real `registry <command>` process inside its transaction (nothing changes) or between the
    commit and the vector payloads (doctor --repair rewrites them from SQL)."""
    home = tmp_path / "reg"
    shutil.copytree(curated_base, home)
    stores = Stores(Settings.load(home), write=False)
    try:
        with stores.catalog.transaction() as session:
            decision = session.scalar(select(Decision).order_by(Decision.id))
            owner = session.get(Individual, decision.individual_id)
            others = [i for i in session.scalars(select(Individual).where(Individual.id != owner.id,
                                                                          Individual.merged_into_id.is_(None)))]
            with_two = next(i for i in others if len(list(session.scalars(select(Sighting.annotation_id).where(
                Sighting.individual_id == i.id, Sighting.status == "active")))) > 1)
            split_off = session.scalar(select(Sighting.annotation_id).where(Sighting.individual_id == with_two.id))
        before = _sql_state(stores)
    finally:
        stores.close()
    args = {"reject": ["reject", str(decision.id)], "reassign-new": ["reassign", str(decision.id), "--new"],
            "merge": ["merge", owner.code, others[0].code],
            "split": ["split", with_two.code, "--images", str(split_off)]}[command]
    killed = run_cli(home, *args, env={"REGISTRY_CRASH_AT": point}, expect=None)
    assert killed.returncode == -9, killed.stderr[-2000:]
    stores = Stores(Settings.load(home), write=True)
    try:
        after = _sql_state(stores)
        assert (after == before) == (point == "curation-in-sql")
    finally:
        stores.close()
    with Registry(Settings.load(home), pipeline=offline_pipeline) as registry:
        assert doctor.check(registry, repair=True)["unrepaired"] == 0
        assert doctor.check(registry)["consistent"]
    stores = Stores(Settings.load(home), write=True)
    try:
        check_invariants(stores)
    finally:
        stores.close()
