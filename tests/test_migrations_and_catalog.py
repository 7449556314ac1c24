"""The catalog schema comes from the migrations, matches the models, and enforces its rules."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from registry.store import migrate
from registry.store.catalog import Catalog, DuplicateImageError, UnknownIndividualError, species_prefix
from registry.store.tables import Base, Individual, Sighting

TABLES = {"surveys", "individuals", "images", "sightings", "decisions", "embedders", "calibrations"}


def _image_fields(sha: str, **extra: object) -> dict:
    return {"sha256": sha, "path": f"/photos/{sha}.jpg", "species": "nyala", "width": 10, "height": 10, **extra}


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
    assert codes == ["NYA-0001", "NYA-0002", "NYA-0003", "COW-0001"]
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
            catalog.add_sighting(session, image, individual, "reference")
    history = catalog.history("NYA-0001")
    assert [s["captured_at"][:10] for s in history["sightings"]] == ["2024-05-03", "2024-05-11", "2024-05-20"]
    assert history["first_seen"].startswith("2024-05-03") and history["surveys"] == 2
    assert catalog.stats() == {"individuals": 1, "images": 3, "sightings": 3, "decisions": 0, "surveys": 2,
                               "pending_images": 3}
    with pytest.raises(IntegrityError), catalog.transaction() as session:  # methods are a closed set
        image = session.scalar(select(Sighting)).image
        session.add(Sighting(image_id=image.id + 100, individual_id=individual.id, method="guessed"))
