"""The catalog schema comes from the migrations, matches the models, and enforces its rules."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from registry.store import migrate
from registry.store.catalog import Catalog, DuplicateImageError, UnknownIndividualError, species_prefix
from registry.store.tables import Base, Individual, Sighting

TABLES = {"surveys", "locations", "deployments", "individuals", "images", "annotations", "events", "sightings",
          "decisions", "embedders", "calibrations", "species", "decision_policies", "changes", "api_tokens", "jobs"}


def _image_fields(sha: str, **extra: object) -> dict:
    return {"sha256": sha, "path": f"/photos/{sha}.jpg", "width": 10, "height": 10, **extra}


def test_migrations_upgrade_match_models_and_downgrade(database_url: str) -> None:
    catalog = Catalog(database_url)
    migrate.upgrade(catalog.engine)
    assert set(inspect(catalog.engine).get_table_names()) >= TABLES
    assert migrate.current_revision(catalog.engine) == migrate.head_revision(catalog.engine)
    with catalog.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    migrate.downgrade(catalog.engine)
    assert not TABLES & set(inspect(catalog.engine).get_table_names())
    catalog.close()


@pytest.fixture
def catalog(database_url: str) -> Catalog:
    catalog = Catalog(database_url)
    migrate.upgrade(catalog.engine)
    yield catalog
    catalog.close()


def test_duplicate_image_is_refused_with_a_clear_message(catalog: Catalog) -> None:
    with catalog.transaction() as session:
        catalog.add_image(session, **_image_fields("a" * 64))
    with pytest.raises(DuplicateImageError, match=r"second\.jpg: this photo is already in the registry"), \
            catalog.transaction() as session:
        catalog.add_image(session, **{**_image_fields("a" * 64), "path": "/other/second.jpg"})
    assert catalog.stats()["images"] == 1


def test_individual_codes_are_stable_and_per_species(catalog: Catalog) -> None:
    with catalog.transaction() as session:
        codes = [catalog.new_individual(session, "nyala").code for _ in range(3)]
        codes.append(catalog.new_individual(session, "cow", name="cow_1").code)
    assert codes == ["NYA-0001", "NYA-0002", "NYA-0003", "COW-0001"]  # codes are the program's, by design
    assert species_prefix("sea turtle") == "SEA"
    with pytest.raises(IntegrityError), catalog.transaction() as session:  # one name per species
        session.add(Individual(code="COW-0099", species="cow", species_seq=99, name="cow_1"))


def test_resolve_follows_merges_and_unknown_names_fail(catalog: Catalog) -> None:
    with catalog.transaction() as session:
        a = catalog.new_individual(session, "nyala", name="nyala_1")
        b = catalog.new_individual(session, "nyala", name="nyala_2")
        b.merged_into_id = a.id
    with catalog.transaction() as session:
        assert catalog.resolve(session, "NYA-0002").code == "NYA-0001"
        assert catalog.resolve(session, "nyala_2").code == "NYA-0001"
        with pytest.raises(UnknownIndividualError, match="NYA-0404"):
            catalog.resolve(session, "NYA-0404")


def test_history_is_in_time_order_and_stats_count(catalog: Catalog) -> None:
    from datetime import datetime

    with catalog.transaction() as session:
        individual = catalog.new_individual(session, "nyala")
        for i, day in enumerate([20, 3, 11]):
            image = catalog.add_image(session, **_image_fields(f"{i}" * 64, captured_at=datetime(2024, 5, day)))
            image.survey_id = catalog.survey(session, f"survey-{i % 2}").id
            catalog.add_sighting(session, catalog.add_annotation(session, image, "nyala"), individual, "reference")
    history = catalog.history("NYA-0001")
    assert [s["captured_at"][:10] for s in history["sightings"]] == ["2024-05-03", "2024-05-11", "2024-05-20"]
    assert history["first_seen"].startswith("2024-05-03") and history["surveys"] == 2
    assert catalog.stats() == {"individuals": 1, "images": 3, "annotations": 3, "sightings": 3, "decisions": 0,
                               "surveys": 2, "pending_annotations": 3}


def test_sighting_methods_are_a_closed_set(catalog: Catalog) -> None:
    """The same row is accepted with a known method and refused with an unknown one: only the CHECK differs."""
    with catalog.transaction() as session:
        individual = catalog.new_individual(session, "nyala")
        annotations = [catalog.add_annotation(session, catalog.add_image(session, **_image_fields(c * 64)), "nyala")
                       for c in "bc"]
        individual_id, annotation_ids = individual.id, [a.id for a in annotations]
    with catalog.transaction() as session:
        session.add(Sighting(annotation_id=annotation_ids[0], individual_id=individual_id, method="confirmed"))
    with pytest.raises(IntegrityError), catalog.transaction() as session:
        session.add(Sighting(annotation_id=annotation_ids[1], individual_id=individual_id, method="guessed"))
    assert catalog.stats()["sightings"] == 1


def test_species_sharing_letters_get_distinct_code_prefixes(catalog: Catalog) -> None:
    """synleopard and synlynx both start with SYN: the second species must still create individuals."""
    with catalog.transaction() as session:
        leopards = [catalog.new_individual(session, "synleopard").code for _ in range(2)]
        lynxes = [catalog.new_individual(session, "synlynx").code for _ in range(2)]
        sylphs = [catalog.new_individual(session, "syn").code]
    codes = leopards + lynxes + sylphs
    assert len(set(codes)) == len(codes)
    prefixes = {c.rsplit("-", 1)[0] for c in leopards}, {c.rsplit("-", 1)[0] for c in lynxes}
    assert len(prefixes[0]) == len(prefixes[1]) == 1 and prefixes[0] != prefixes[1]
    assert [c.rsplit("-", 1)[1] for c in lynxes] == ["0001", "0002"]


def test_upgrade_from_0002_gives_each_species_its_prefix_and_continues_numbering(database_url: str) -> None:
    from sqlalchemy import text

    catalog = Catalog(database_url)
    migrate.upgrade(catalog.engine, "0002")
    with catalog.engine.begin() as connection:
        for seq in (1, 2, 3):
            connection.execute(text("INSERT INTO individuals (code, species, species_seq, created_at) "
                                    "VALUES (:c, 'nyala', :s, CURRENT_TIMESTAMP)"), {"c": f"NYA-{seq:04d}", "s": seq})
    migrate.upgrade(catalog.engine)
    with catalog.transaction() as session:
        assert catalog.new_individual(session, "nyala").code == "NYA-0004"
        assert catalog.new_individual(session, "nyalabis").code.startswith("NYAL-")
    catalog.close()


def test_decision_policy_versions_are_kept_and_the_newest_is_in_force(catalog: Catalog) -> None:
    from registry.decide.policy import DecisionPolicy

    assert catalog.current_policy() is None
    first = catalog.save_policy(DecisionPolicy("offline", "learned", 0.5, 0.35, 40.0, reason="init"))
    second = catalog.save_policy(first.derive("tune", "tester", thresholds={"nyala": 0.61}))
    assert catalog.current_policy() == second and second.parent == first.version
    assert second.threshold_for("nyala") == 0.61 and second.threshold_for("cow") == 0.35
    assert [p.version for p in catalog.policy_history()] == [first.version, second.version]
    with pytest.raises(ValueError, match="fusion"):
        DecisionPolicy("offline", "average", 0.5, 0.35, 40.0)
