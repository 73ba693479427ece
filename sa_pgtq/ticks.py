"""When a periodic task is due: the ticks of an `every=` interval or of a cron expression.

Every worker must compute the same ticks, whatever its start time: an interval
counts from the Unix epoch (UTC), never from when a worker started, and a cron
expression is evaluated by cronsim (an optional dependency, `sa_pgtq[cron]`) in
the schedule's time zone. All ticks are aware datetimes in UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidScheduleError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECOND = timedelta(seconds=1)


class Ticks(Protocol):
    def latest(self, now: datetime) -> datetime:
        """The last tick at or before `now`."""

    def following(self, now: datetime) -> datetime:
        """The first tick after `now`."""


class Every:
    """The multiples of `interval` since the Unix epoch."""

    def __init__(self, interval: timedelta) -> None:
        self.interval = interval

    def __repr__(self) -> str:
        return f"every {self.interval}"

    def latest(self, now: datetime) -> datetime:
        # timedelta arithmetic is exact, in whole microseconds.
        return EPOCH + (now - EPOCH) // self.interval * self.interval

    def following(self, now: datetime) -> datetime:
        return self.latest(now) + self.interval


class Cron:
    """The ticks of a cron expression in a time zone (five fields, or six with seconds first)."""

    def __init__(self, expression: str, zone: tzinfo) -> None:
        self.expression = expression
        self.zone = zone

    def __repr__(self) -> str:
        return f"cron {self.expression!r} in {self.zone}"

    def latest(self, now: datetime) -> datetime:
        from cronsim import CronSim

        # Backwards from the next whole second (counted in UTC: an aware datetime's own
        # arithmetic is by the wall clock), so that a tick falling on `now` counts.
        now = now.astimezone(timezone.utc)
        start = (now.replace(microsecond=0) + _SECOND).astimezone(self.zone)
        latest: datetime = next(CronSim(self.expression, start, reverse=True))
        # Going backwards, cronsim loses `fold` in the hour a DST change repeats and lands
        # up to an hour early; forwards from there it is exact.
        for tick in CronSim(self.expression, latest):
            if tick > now:
                break
            latest = tick
        return latest.astimezone(timezone.utc)

    def following(self, now: datetime) -> datetime:
        from cronsim import CronSim

        tick: datetime = next(CronSim(self.expression, now.astimezone(self.zone)))
        return tick.astimezone(timezone.utc)


def every(value: object) -> Every:
    """`every=`: a timedelta or seconds, positive (at least a microsecond)."""
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float)):
        raise InvalidScheduleError(
            f"every must be a timedelta or seconds, got {type(value).__name__}"
        )
    try:
        interval = value if isinstance(value, timedelta) else timedelta(seconds=value)
    except (OverflowError, ValueError):  # inf, nan, or beyond timedelta's range
        raise InvalidScheduleError(
            f"every must be a finite number of seconds, got {value!r}"
        ) from None
    if interval <= timedelta(0):
        raise InvalidScheduleError(f"every must be positive, got {value!r}")
    return Every(interval)


def cron(expression: object, zone_name: object) -> Cron:
    """`cron=` in `timezone=`, checked by parsing it (cronsim is imported only here)."""
    if not isinstance(expression, str):
        raise InvalidScheduleError(f"cron must be a str, got {type(expression).__name__}")
    zone = time_zone(zone_name)
    try:
        from cronsim import CronSimError
    except ImportError:
        raise ModuleNotFoundError(
            "cron= schedules need cronsim: pip install sa_pgtq[cron]"
        ) from None
    schedule = Cron(expression, zone)
    try:
        schedule.following(datetime.now(timezone.utc))
    except CronSimError as exc:
        raise InvalidScheduleError(f"bad cron expression {expression!r}: {exc}") from None
    except StopIteration:
        raise InvalidScheduleError(f"cron expression {expression!r} never fires") from None
    return schedule


def time_zone(name: object) -> tzinfo:
    """An IANA time zone name as a tzinfo ("UTC" needs no time zone database)."""
    if not isinstance(name, str):
        raise InvalidScheduleError(f"timezone must be a str, got {type(name).__name__}")
    if name == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(f"unknown timezone {name!r} (an IANA name)") from None
