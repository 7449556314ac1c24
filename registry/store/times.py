"""Every time the catalog stores is UTC (naive `datetime`s in UTC, on SQLite and PostgreSQL alike). A time that
names its offset (ISO 8601 `Z` or `+02:00`, EXIF OffsetTimeOriginal) is converted; a naive one (a camera's
clock, a manifest without an offset) is read in the time zone of its location when the registry knows it, else
in the registry's `time_zone` setting (UTC unless set)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class TimeZoneError(ValueError):
    pass


def zone(name: str) -> ZoneInfo:
    """The IANA time zone of this name (e.g. Africa/Johannesburg); an unknown name is an error naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TimeZoneError(f"unknown time zone {name!r} (use an IANA name such as Europe/Prague or UTC)") from exc


def to_utc(value: datetime | None, naive_zone: str = "UTC") -> datetime | None:
    """`value` as naive UTC: an aware time converted, a naive one read as wall-clock time in `naive_zone`."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone(naive_zone))
    return value.astimezone(UTC).replace(tzinfo=None)
