"""Reading subscribers: topics, views, statuses, search and counts."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, delete, func, insert, literal, literal_column, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database
from mailer.models import (
    Subscriber,
    SubscriberStatus,
    SubscriberTopic,
    Suppression,
    Topic,
    search_key,
)
from mailer.subscribers.values import (
    _CHUNK,
    SHOWN_STATUSES,
    InvalidField,
    SubscriberView,
    TopicView,
    matches_status,
    shown_status,
)
from mailer.suppression import (
    email_hash,
    email_key,
)
from mailer.tokens import (
    Purpose,
    make_token,
)
from mailer.topics import UnknownTopics, resolve_topics

log = logging.getLogger(__name__)


# --- topics ---------------------------------------------------------------------------


async def active_topics(database: Database) -> list[TopicView]:
    """The topics a subscriber can choose, in configuration order."""
    async with database.session() as session:
        rows = await session.execute(
            select(Topic.slug, Topic.name).where(Topic.active.is_(True)).order_by(Topic.id)
        )
        return [TopicView(slug, name) for slug, name in rows]


async def _resolve_topics(session: AsyncSession, wanted: Iterable[str]) -> list[int]:
    """Topic ids for slugs or names (case-insensitive); unknown ones are an InvalidField."""
    try:
        return await resolve_topics(session, wanted)
    except UnknownTopics as exc:
        raise InvalidField("topics", f"There is no topic {exc.labels[0]!r}.") from None


async def _set_topics(session: AsyncSession, subscriber_id: int, topic_ids: Sequence[int]) -> None:
    await session.execute(
        delete(SubscriberTopic).where(SubscriberTopic.subscriber_id == subscriber_id)
    )
    if topic_ids:
        await session.execute(
            insert(SubscriberTopic),
            [{"subscriber_id": subscriber_id, "topic_id": t} for t in topic_ids],
        )


async def _topic_slugs(
    session: AsyncSession, subscriber_ids: Sequence[int]
) -> dict[int, list[str]]:
    result: dict[int, list[str]] = {}
    for start in range(0, len(subscriber_ids), _CHUNK):
        chunk = subscriber_ids[start : start + _CHUNK]
        rows = await session.execute(
            select(SubscriberTopic.subscriber_id, Topic.slug)
            .join(Topic, Topic.id == SubscriberTopic.topic_id)
            .where(SubscriberTopic.subscriber_id.in_(chunk))
            .order_by(SubscriberTopic.subscriber_id, Topic.id)
        )
        for subscriber_id, slug in rows:
            result.setdefault(subscriber_id, []).append(slug)
    return result


async def suppressions_for(
    session: AsyncSession, settings: Settings, subscribers: Iterable[tuple[int, str]]
) -> dict[int, tuple[str, str | None]]:
    """(reason, details) of the suppressed ones among a few (id, address) pairs."""
    by_hash = {
        email_hash(settings, address): subscriber_id for subscriber_id, address in subscribers
    }
    found: dict[int, tuple[str, str | None]] = {}
    hashes = list(by_hash)
    for start in range(0, len(hashes), _CHUNK):
        rows = await session.execute(
            select(Suppression.email_hash, Suppression.reason, Suppression.details).where(
                Suppression.email_hash.in_(hashes[start : start + _CHUNK])
            )
        )
        found.update({by_hash[hashed]: (reason, details) for hashed, reason, details in rows})
    return found


async def subscriber_ids_with_status(
    session: AsyncSession, settings: Settings, wanted: str
) -> list[int]:
    """Ids of every subscriber whose shown status is ``wanted`` (one of SHOWN_STATUSES),
    newest first. Addresses are hashed here: the list keeps only keyed hashes."""
    reasons = dict(
        (hashed, reason)
        for hashed, reason in await session.execute(
            select(Suppression.email_hash, Suppression.reason)
        )
    )
    if not reasons and wanted in ("suppressed", "bounced"):
        return []
    query = select(Subscriber.id, Subscriber.email, Subscriber.status).order_by(
        Subscriber.created_at.desc(), Subscriber.id.desc()
    )
    if wanted in {s.value for s in SubscriberStatus}:
        # A shown status of the subscription itself implies that subscription status.
        query = query.where(Subscriber.status == SubscriberStatus(wanted))
    wanted_statuses = ("suppressed", "bounced") if wanted == "suppressed" else (wanted,)
    return [
        subscriber_id
        for subscriber_id, address, status in await session.execute(query)
        if shown_status(status, reasons.get(email_hash(settings, address)) if reasons else None)
        in wanted_statuses
    ]


async def _suppressions(
    session: AsyncSession, settings: Settings, views: Sequence[SubscriberView]
) -> list[SubscriberView]:
    """The views with their suppression reasons (the list holds only keyed hashes,
    so each address is hashed here; one query reads the whole list)."""
    if not views:
        return []
    rows = await session.execute(
        select(Suppression.email_hash, Suppression.reason, Suppression.details)
    )
    reasons = {hashed: (reason, details) for hashed, reason, details in rows}
    if not reasons:
        return list(views)
    found = []
    for view in views:
        reason, details = reasons.get(email_hash(settings, view.email), (None, None))
        found.append(replace(view, suppression=reason, suppression_details=details))
    return found


_VIEW_COLUMNS = (
    Subscriber.id,
    Subscriber.email,
    Subscriber.name,
    Subscriber.status,
    Subscriber.frequency,
    Subscriber.created_at,
    Subscriber.confirmed_at,
    Subscriber.unsubscribed_at,
    Subscriber.link_key,
)


def _view(row: Any, slugs: Sequence[str]) -> SubscriberView:
    return SubscriberView(
        id=row.id,
        email=row.email,
        name=row.name,
        status=row.status,
        frequency=row.frequency,
        topics=tuple(slugs),
        created_at=row.created_at,
        confirmed_at=row.confirmed_at,
        unsubscribed_at=row.unsubscribed_at,
        link_key=row.link_key,
    )


async def link_key_of(database: Database, subscriber_id: int) -> str | None:
    """The key a subscriber's mailed links are signed with; None when they are gone."""
    async with database.session() as session:
        return await session.scalar(
            select(Subscriber.link_key).where(Subscriber.id == subscriber_id)
        )


def link_for(settings: Settings, purpose: Purpose, subscriber: SubscriberView) -> str:
    """The signed token of a preferences or unsubscribe link for this subscription."""
    return make_token(settings, purpose, subscriber.id, subscriber.link_key)


async def _load_view(session: AsyncSession, subscriber_id: int) -> SubscriberView | None:
    row = (
        await session.execute(select(*_VIEW_COLUMNS).where(Subscriber.id == subscriber_id))
    ).one_or_none()
    if row is None:
        return None
    slugs = await _topic_slugs(session, [subscriber_id])
    return _view(row, slugs.get(subscriber_id, []))


async def get_subscriber(
    database: Database, subscriber_id: int, settings: Settings | None = None
) -> SubscriberView | None:
    """One subscriber; with ``settings``, its suppression reason too."""
    async with database.session() as session:
        view = await _load_view(session, subscriber_id)
        if view is None or settings is None:
            return view
        return (await _suppressions(session, settings, [view]))[0]


async def find_subscriber(
    database: Database, address: str, settings: Settings | None = None
) -> SubscriberView | None:
    """The subscriber with this address; with ``settings``, its suppression reason too."""
    async with database.session() as session:
        subscriber_id = await session.scalar(
            select(Subscriber.id).where(Subscriber.email_key == email_key(address))
        )
        view = None if subscriber_id is None else await _load_view(session, subscriber_id)
        if view is None or settings is None:
            return view
        return (await _suppressions(session, settings, [view]))[0]


async def list_subscribers(
    database: Database,
    *,
    status: SubscriberStatus | str | None = None,
    settings: Settings | None = None,
) -> list[SubscriberView]:
    """Every subscriber (optionally of one of SHOWN_STATUSES), oldest first. With
    ``settings`` each view carries its suppression reason, and a status is the one
    shown to operators: "confirmed" then leaves out confirmed readers who bounced."""
    wanted = status.value if isinstance(status, SubscriberStatus) else status
    if wanted is not None and wanted not in SHOWN_STATUSES:
        choices = ", ".join(SHOWN_STATUSES)
        raise InvalidField("status", f"{wanted!r} is not a status (one of {choices}).")
    if settings is None and wanted in ("suppressed", "bounced"):
        raise InvalidField("status", f"listing {wanted} subscribers needs the settings")
    async with database.session() as session:
        query = select(*_VIEW_COLUMNS).order_by(Subscriber.id)
        if wanted in {s.value for s in SubscriberStatus}:
            query = query.where(Subscriber.status == SubscriberStatus(wanted))
        rows = (await session.execute(query)).all()
        slugs = await _topic_slugs(session, [r.id for r in rows]) if rows else {}
        views = [_view(r, slugs.get(r.id, [])) for r in rows]
        if settings is None:
            return views
        views = await _suppressions(session, settings, views)
    return [v for v in views if wanted is None or matches_status(v, wanted)]


async def count_by_status(database: Database) -> dict[str, int]:
    async with database.session() as session:
        rows = await session.execute(
            select(Subscriber.status, func.count()).group_by(Subscriber.status)
        )
        counts = {status.value: 0 for status in SubscriberStatus}
        counts.update({status.value: n for status, n in rows})
        return counts


# --- the subscriber list at scale -----------------------------------------------------------

# Below this many rows (by the planner's estimate) counts are exact; above it they
# come from PostgreSQL's statistics, which an exact count would take a second to beat.
EXACT_COUNT_LIMIT = 100_000
# A search counts its matches up to this many and says "more than" beyond.
SEARCH_COUNT_LIMIT = 1_000
# Rows a search with more matches reads in order before it sorts every match
# (enough when one row in a hundred matches; see _search_page).
SEARCH_WINDOW = 5_000
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class Count:
    """A number of subscribers and how sure it is: "exact", "about" (the database's
    estimate, refreshed by ANALYZE) or "more than" (counting stopped at a limit)."""

    value: int
    precision: str = "exact"

    @property
    def exact(self) -> bool:
        return self.precision == "exact"

    def __str__(self) -> str:
        shown = f"{self.value:,}"
        return shown if self.exact else f"{self.precision} {shown}"


@dataclass(frozen=True)
class SubscriberPage:
    """One page of a list or search, newest or oldest first, and where the next starts."""

    items: list[SubscriberView]
    total: Count
    # Pass as ``after`` for the next page; None on the last one.
    next_after: int | None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_condition(dialect: str, search: str) -> Any:
    """Address starts with ``search`` (case-insensitive), or every word of ``search``
    starts a word of the name, with case and accents folded: "simonyte", "Šimonytė"
    and "ŠIMONYTĖ" find "Ona Šimonytė-Kairė", so do "ona sim" and "kaire".
    PostgreSQL answers both from indexes (migration 0009); SQLite ranges the address
    over its unique index and scans names."""
    prefix = email_key(search)
    if dialect == "postgresql":
        by_address = Subscriber.email_key.like(_escape_like(prefix) + "%", escape="\\")
    else:
        # Every key that starts with the prefix sorts between it and prefix + U+10FFFF.
        by_address = and_(
            Subscriber.email_key >= prefix, Subscriber.email_key < prefix + "\U0010ffff"
        )
    words = (search_key(search) or "").split()
    if not words or "@" in search:
        return by_address  # names cannot hold an "@" (values.clean_name)
    if dialect == "postgresql":
        # The expression of the GIN index ix_subscribers_name_words, to the letter.
        simple = literal_column("'simple'::regconfig")
        document = func.to_tsvector(
            simple, func.coalesce(Subscriber.name_key, literal_column("''"))
        )
        by_name = document.op("@@")(func.to_tsquery(simple, " & ".join(f"{w}:*" for w in words)))
    else:
        spaced = literal(" ") + Subscriber.name_key
        by_name = and_(*(spaced.like(f"% {_escape_like(w)}%", escape="\\") for w in words))
    return or_(by_address, by_name)


async def _estimated_rows(session: AsyncSession, table: str) -> int | None:
    """PostgreSQL's row estimate for a table (None on SQLite or before any ANALYZE)."""
    if session.bind.dialect.name != "postgresql":
        return None
    estimate = await session.scalar(
        text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
    )
    return None if estimate is None or estimate < 0 else int(estimate)


async def _status_estimates(session: AsyncSession, rows: int) -> dict[str, int] | None:
    """Rows per status from the column statistics' most common values."""
    if session.bind.dialect.name != "postgresql":
        return None
    found = (
        await session.execute(
            text(
                "SELECT most_common_vals::text::text[], most_common_freqs FROM pg_stats "
                "WHERE tablename = 'subscribers' AND attname = 'status' "
                "AND schemaname = current_schema()"
            )
        )
    ).first()
    if found is None or found[0] is None:
        return None
    return {value: round(freq * rows) for value, freq in zip(found[0], found[1], strict=True)}


async def counts_by_status(database: Database) -> dict[str, Count]:
    """Subscribers per subscription status: exact on small lists, PostgreSQL's
    estimate ("about") on large ones, where an exact count reads every row."""
    async with database.session() as session:
        rows = await _estimated_rows(session, "subscribers")
        if rows is not None and rows >= EXACT_COUNT_LIMIT:
            estimates = await _status_estimates(session, rows)
            if estimates is not None:
                return {
                    s.value: Count(estimates.get(s.value, 0), "about") for s in SubscriberStatus
                }
    exact = await count_by_status(database)
    return {name: Count(n) for name, n in exact.items()}


async def _count(session: AsyncSession, conditions: Sequence[Any], status: str | None) -> Count:
    rows = await _estimated_rows(session, "subscribers")
    if rows is not None and rows >= EXACT_COUNT_LIMIT:
        if status is None:
            return Count(rows, "about")
        estimates = await _status_estimates(session, rows)
        if estimates is not None:
            return Count(estimates.get(status, 0), "about")
    counted = await session.scalar(select(func.count(Subscriber.id)).where(*conditions))
    return Count(counted or 0)


async def _search_page(
    session: AsyncSession,
    conditions: Sequence[Any],
    after: int | None,
    newest_first: bool,
    offset: int,
    limit: int,
) -> tuple[list[int], Count]:
    """Ids of one page of a search (one more than ``limit`` when more follow), and
    how many match.

    Up to SEARCH_COUNT_LIMIT matches are read unordered, so the search indexes
    answer, and sorted here. With more, an ordered query would let PostgreSQL's
    planner walk the primary key testing every row, since it cannot tell how many
    match (measured at a million readers: 2.5 s for an address prefix whose readers
    are all old). So the page is first looked for among the next SEARCH_WINDOW rows
    in order, and only if it is not there among every match sorted by id ("id + 0"
    keeps the planner off the primary key): a cost bounded by the window or by the
    matches, never by the table."""
    found = list(
        await session.scalars(
            select(Subscriber.id).where(*conditions).limit(SEARCH_COUNT_LIMIT + 1)
        )
    )
    if len(found) <= SEARCH_COUNT_LIMIT:
        ids = sorted(found, reverse=newest_first)
        if after is not None:
            ids = [i for i in ids if (i < after if newest_first else i > after)]
        return ids[offset : offset + limit + 1], Count(len(found))
    keyset = []
    if after is not None:
        keyset.append(Subscriber.id < after if newest_first else Subscriber.id > after)
    total = Count(SEARCH_COUNT_LIMIT, "more than")
    window = (
        select(Subscriber.id.label("id"), and_(*conditions).label("hit"))
        .where(*keyset)
        .order_by(Subscriber.id.desc() if newest_first else Subscriber.id.asc())
        .limit(SEARCH_WINDOW)
        .subquery()
    )
    ids = list(
        await session.scalars(
            select(window.c.id)
            .where(window.c.hit)
            .order_by(window.c.id.desc() if newest_first else window.c.id.asc())
            .offset(offset)
            .limit(limit + 1)
        )
    )
    if len(ids) > limit:
        return ids, total
    unindexed = Subscriber.id + 0
    ids = list(
        await session.scalars(
            select(Subscriber.id)
            .where(*conditions, *keyset)
            .order_by(unindexed.desc() if newest_first else unindexed.asc())
            .offset(offset)
            .limit(limit + 1)
        )
    )
    return ids, total


async def _page(
    session: AsyncSession,
    conditions: Sequence[Any],
    search: str,
    status: str | None,
    after: int | None,
    newest_first: bool,
    offset: int,
    limit: int,
) -> tuple[list[int], Count]:
    if search:
        return await _search_page(session, conditions, after, newest_first, offset, limit)
    keyset = []
    if after is not None:
        keyset.append(Subscriber.id < after if newest_first else Subscriber.id > after)
    ids = await session.scalars(
        select(Subscriber.id)
        .where(*conditions, *keyset)
        .order_by(Subscriber.id.desc() if newest_first else Subscriber.id.asc())
        .offset(offset)
        .limit(limit + 1)
    )
    return list(ids), await _count(session, conditions, status)


async def _hashed_page(
    session: AsyncSession,
    settings: Settings,
    conditions: Sequence[Any],
    status: str,
    after: int | None,
    newest_first: bool,
    offset: int,
    limit: int,
) -> tuple[list[int], Count]:
    ids = await subscriber_ids_with_status(session, settings, status)
    if conditions:
        ids = list(
            await session.scalars(select(Subscriber.id).where(Subscriber.id.in_(ids), *conditions))
        )
    ids.sort(reverse=newest_first)
    total = Count(len(ids))
    if after is not None:
        ids = [i for i in ids if (i < after if newest_first else i > after)]
    return ids[offset : offset + limit + 1], total


async def _filtered_page(
    session: AsyncSession,
    settings: Settings,
    conditions: Sequence[Any],
    search: str,
    status: str,
    after: int | None,
    newest_first: bool,
    offset: int,
    limit: int,
) -> tuple[list[int], Count]:
    kept: list[int] = []
    total: Count | None = None
    while len(kept) <= offset + limit:
        ids, counted = await _page(
            session, conditions, search, status, after, newest_first, 0, limit + 1
        )
        total = total or counted
        rows = (
            await session.execute(
                select(Subscriber.id, Subscriber.email, Subscriber.status).where(
                    Subscriber.id.in_(ids)
                )
            )
        ).all()
        reasons = await suppressions_for(session, settings, [(r.id, r.email) for r in rows])
        shown = {r.id: shown_status(r.status, reasons.get(r.id, (None, None))[0]) for r in rows}
        kept += [i for i in ids if shown[i] == status]
        if len(ids) <= limit + 1:
            break
        after = ids[-1]
    assert total is not None
    precision = "about" if total.precision == "exact" else total.precision
    return kept[offset : offset + limit + 1], Count(total.value, precision)


async def search_subscribers(
    database: Database,
    settings: Settings,
    *,
    search: str = "",
    status: str | None = None,
    after: int | None = None,
    offset: int = 0,
    limit: int = 50,
    newest_first: bool = True,
) -> SubscriberPage:
    """One page of subscribers matching ``search`` (see :func:`search_condition`) and a
    shown ``status`` (one of SHOWN_STATUSES), with suppression reasons. Pages are
    keyed by id (``after`` = the previous page's ``next_after``), so the millionth row
    costs what the first does (``offset`` still works, at a cost that grows with it).
    The admin's list and the API's both call this."""
    search = search.strip()
    if status is not None and status not in SHOWN_STATUSES:
        choices = ", ".join(SHOWN_STATUSES)
        raise InvalidField("status", f"{status!r} is not a status (one of {choices}).")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidField("limit", f"A page has 1 to {MAX_PAGE_SIZE} subscribers.")
    async with database.session() as session:
        conditions: list[Any] = []
        if search:
            conditions.append(search_condition(database.dialect, search))
        if status in {s.value for s in SubscriberStatus}:
            conditions.append(Subscriber.status == SubscriberStatus(status))
        listed = await _estimated_rows(session, "subscribers")
        large = listed is not None and listed >= EXACT_COUNT_LIMIT
        suppressions = status is not None and (
            await session.scalar(select(Suppression.id).limit(1)) is not None
        )
        if status in ("suppressed", "bounced") or (suppressions and not large):
            # A shown status depends on the suppression list, which holds only keyed
            # hashes: every address is hashed (a second for a million readers).
            chosen, total = await _hashed_page(
                session, settings, conditions, status or "", after, newest_first, offset, limit
            )
        elif suppressions:
            # A large list: pages skip the few suppressed readers whose shown status
            # differs, and the count is the subscription status's estimate.
            chosen, total = await _filtered_page(
                session,
                settings,
                conditions,
                search,
                status or "",
                after,
                newest_first,
                offset,
                limit,
            )
        else:
            chosen, total = await _page(
                session, conditions, search, status, after, newest_first, offset, limit
            )
        more = len(chosen) > limit
        chosen = chosen[:limit]
        views = await _views(session, settings, chosen)
    views.sort(key=lambda v: v.id, reverse=newest_first)
    return SubscriberPage(views, total, chosen[-1] if more else None)


async def _views(
    session: AsyncSession, settings: Settings, ids: Sequence[int]
) -> list[SubscriberView]:
    if not ids:
        return []
    rows = (await session.execute(select(*_VIEW_COLUMNS).where(Subscriber.id.in_(ids)))).all()
    slugs = await _topic_slugs(session, ids)
    suppressed = await suppressions_for(session, settings, [(r.id, r.email) for r in rows])
    return [
        replace(
            _view(r, slugs.get(r.id, [])),
            suppression=suppressed.get(r.id, (None, None))[0],
            suppression_details=suppressed.get(r.id, (None, None))[1],
        )
        for r in rows
    ]
