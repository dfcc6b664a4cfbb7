"""The subscriber store (mailer.subscribers) on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import func, select, text

from mailer import subscribers as store
from mailer.config import Settings
from mailer.db import Database
from mailer.models import (
    ConsentEvent,
    Frequency,
    Subscriber,
    SubscriberStatus,
    Suppression,
    Watermark,
    utcnow,
)
from mailer.subscribers import bulk
from mailer.suppression import email_hash, is_suppressed
from mailer.tokens import Purpose, link, make_token
from tests.conftest import make_settings
from tests.support.smtp import SmtpServer

TOPICS = [{"name": "Economy"}, {"name": "Health"}, {"name": "Foreign affairs"}]
ORIGIN = store.Origin(
    ip="198.51.100.20", user_agent="Mozilla/5.0 Test", form_url="http://testserver/"
)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        topics=TOPICS,
        site={"base_url": "http://testserver"},
        smtp={"embedded": False, "host": "127.0.0.1", "port": smtp_server.port},
    )


def confirm_link(message_text: str) -> str:
    match = re.search(r"http://testserver/confirm/\S+", message_text)
    assert match, message_text
    return match.group(0)


def body(received: object) -> str:
    message = received.message  # type: ignore[attr-defined]
    return message.get_body(("plain",)).get_content()


async def row(database: Database, subscriber_id: int) -> Subscriber:
    async with database.session() as session:
        found = await session.get(Subscriber, subscriber_id)
        assert found is not None
        return found


async def consents(database: Database, action: str | None = None) -> list[ConsentEvent]:
    async with database.session() as session:
        query = select(ConsentEvent).order_by(ConsentEvent.id)
        if action:
            query = query.where(ConsentEvent.action == action)
        return list((await session.scalars(query)).all())


async def test_signup_stores_pending_subscriber_with_consent_record(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    result = await store.signup(
        database,
        settings,
        " Zygimantas@Example.LT ",
        name="Žygimantas Šimonytė",
        topics=["economy", "health"],
        frequency="weekly",
        origin=ORIGIN,
        now=now,
    )
    assert result.confirmation_due
    view = await store.get_subscriber(database, result.subscriber_id)
    assert view is not None
    assert view.email == "Zygimantas@example.lt"
    assert view.status is SubscriberStatus.PENDING
    assert view.frequency is Frequency.WEEKLY
    assert view.topics == ("economy", "health")
    assert (await row(database, result.subscriber_id)).email_key == "zygimantas@example.lt"
    [event] = await consents(database, "signup")
    assert event.subscriber_id == result.subscriber_id
    assert (event.ip, event.user_agent, event.form_url) == (
        "198.51.100.20",
        "Mozilla/5.0 Test",
        "http://testserver/",
    )
    assert event.wording_version == settings.signup.consent_version
    assert abs(event.at - now) < timedelta(seconds=1)


async def test_confirmation_mail_at_most_once_per_interval(
    database: Database, settings: Settings, smtp_server: SmtpServer
) -> None:
    start = utcnow()
    sent = store.MailOutcome("confirmation", sent=True)
    first = await store.signup(database, settings, "ona@example.org", now=start)
    assert await store.send_due_mail(database, settings, first.subscriber_id, now=start) == sent
    assert len(smtp_server.messages) == 1
    assert smtp_server.messages[0].rcpt_tos == ["ona@example.org"]

    later = start + timedelta(minutes=9)
    again = await store.signup(database, settings, "ONA@example.org", now=later)
    assert again.subscriber_id == first.subscriber_id
    assert not again.confirmation_due
    assert await store.send_due_mail(database, settings, first.subscriber_id, now=later) is None
    assert len(smtp_server.messages) == 1

    after = start + timedelta(minutes=10, seconds=1)
    third = await store.signup(database, settings, "ona@example.org", now=after)
    assert third.confirmation_due
    assert await store.send_due_mail(database, settings, first.subscriber_id, now=after) == sent
    assert len(smtp_server.messages) == 2
    # Both mails carry a working link to the same pending subscription.
    assert confirm_link(body(smtp_server.messages[0])) != ""
    await store.confirm(
        database, settings, confirm_link(body(smtp_server.messages[1])).rsplit("/", 1)[1]
    )


async def test_confirm_is_single_use_and_starts_digests_now(
    database: Database, settings: Settings, smtp_server: SmtpServer
) -> None:
    result = await store.signup(database, settings, "ona@example.org", topics=["health"])
    await store.send_due_mail(database, settings, result.subscriber_id)
    token = confirm_link(body(smtp_server.messages[0])).rsplit("/", 1)[1]

    preview = await store.pending_confirmation(database, settings, token)
    assert preview.subscriber.status is SubscriberStatus.PENDING
    assert (await row(database, result.subscriber_id)).status is SubscriberStatus.PENDING

    now = utcnow()
    confirmed = await store.confirm(database, settings, token, origin=ORIGIN, now=now)
    assert not confirmed.already_confirmed
    subscriber = await row(database, result.subscriber_id)
    assert subscriber.status is SubscriberStatus.CONFIRMED
    assert subscriber.confirmed_at == subscriber.digest_since
    assert abs(subscriber.confirmed_at - now) < timedelta(seconds=1)
    assert subscriber.confirm_nonce is None
    [event] = await consents(database, "confirm")
    assert event.ip == ORIGIN.ip and event.wording_version == settings.signup.consent_version

    second = await store.confirm(database, settings, token)
    assert second.already_confirmed
    assert len(await consents(database, "confirm")) == 1


async def test_confirm_rejects_forged_expired_and_replaced_links(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await store.signup(database, settings, "ona@example.org")
    nonce = (await row(database, result.subscriber_id)).confirm_nonce
    with pytest.raises(store.InvalidLink):
        await store.confirm(database, settings, "not-a-token")
    with pytest.raises(store.InvalidLink):
        await store.confirm(
            database, settings, make_token(settings, Purpose.CONFIRM, result.subscriber_id, "x")
        )
    # A manage link is signed for another purpose and confirms nothing.
    with pytest.raises(store.InvalidLink):
        await store.confirm(
            database, settings, make_token(settings, Purpose.MANAGE, result.subscriber_id, "x")
        )
    issued_at = int(time.time() - settings.signup.confirm_ttl.total_seconds() - 60)
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: issued_at)
    old = make_token(settings, Purpose.CONFIRM, result.subscriber_id, nonce)
    monkeypatch.undo()
    with pytest.raises(store.ExpiredLink):
        await store.confirm(database, settings, old)
    assert (await row(database, result.subscriber_id)).status is SubscriberStatus.PENDING


async def test_failed_send_is_retried_by_the_resend_job(
    database: Database, settings: Settings, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    down = settings.model_copy(
        update={"smtp": settings.smtp.model_copy(update={"port": _closed_port()})}
    )
    result = await store.signup(database, down, "ona@example.org")
    outcome = await store.send_due_mail(database, down, result.subscriber_id)
    assert outcome is not None and (outcome.sent, outcome.server_unavailable) == (False, True)
    assert outcome.describe().startswith("confirmation queued, will retry: ")
    assert f"127.0.0.1:{down.smtp.port}" in outcome.describe()
    assert (await row(database, result.subscriber_id)).confirmation_sent_at is None
    assert await store.retry_queued_mail(database, down) == 0

    assert await store.retry_queued_mail(database, settings) == 1
    assert [m.rcpt_tos for m in smtp_server.messages] == [["ona@example.org"]]
    assert (await row(database, result.subscriber_id)).confirmation_sent_at is not None
    # Nothing left to resend, and the interval keeps a second run quiet.
    assert await store.retry_queued_mail(database, settings) == 0
    assert len(smtp_server.messages) == 1


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_notice_the_server_refused_is_queued_and_retried(
    database: Database, settings: Settings, smtp_server: SmtpServer
) -> None:
    added = await store.add(database, settings, "ona@example.org", confirmed=True)
    down = settings.model_copy(
        update={"smtp": settings.smtp.model_copy(update={"port": _closed_port()})}
    )
    result = await store.signup(database, down, "ona@example.org")
    outcome = await store.send_due_mail(database, down, result.subscriber_id)
    assert outcome is not None and not outcome.sent
    assert outcome.describe().startswith("already-subscribed queued, will retry: ")
    assert (await row(database, added.subscriber.id)).notice_due == "already-subscribed"
    assert smtp_server.messages == []

    assert await store.retry_queued_mail(database, settings) == 1
    assert "already subscribed" in body(smtp_server.messages[0])
    assert (await row(database, added.subscriber.id)).notice_due is None
    assert await store.retry_queued_mail(database, settings) == 0
    assert len(smtp_server.messages) == 1


async def test_signup_of_confirmed_address_changes_nothing_and_sends_notice(
    database: Database, settings: Settings, smtp_server: SmtpServer
) -> None:
    added = await store.add(
        database, settings, "ona@example.org", topics=["health"], confirmed=True
    )
    result = await store.signup(
        database, settings, "ona@example.org", name="Intruder", topics=["economy"]
    )
    assert result.subscriber_id == added.subscriber.id
    view = await store.get_subscriber(database, added.subscriber.id)
    assert view is not None
    assert (view.status, view.topics, view.name) == (SubscriberStatus.CONFIRMED, ("health",), None)
    assert await store.send_due_mail(database, settings, result.subscriber_id) == store.MailOutcome(
        "already-subscribed", sent=True
    )
    text = body(smtp_server.messages[0])
    assert "already subscribed" in text
    assert "/confirm/" not in text and "/preferences/" in text


async def test_unsubscribe_suppresses_until_confirmed_again(
    database: Database, settings: Settings, smtp_server: SmtpServer
) -> None:
    added = await store.add(database, settings, "ona@example.org", confirmed=True)
    assert await store.unsubscribe(database, settings, added.subscriber.id, origin=ORIGIN)
    assert not await store.unsubscribe(database, settings, added.subscriber.id)
    async with database.session() as session:
        assert await is_suppressed(session, settings, "ONA@example.org")
    view = await store.get_subscriber(database, added.subscriber.id)
    assert view is not None and view.status is SubscriberStatus.UNSUBSCRIBED

    again = await store.signup(database, settings, "ona@example.org")
    await store.send_due_mail(database, settings, again.subscriber_id)
    async with database.session() as session:
        # Signing up alone does not lift the suppression; confirming does.
        assert await is_suppressed(session, settings, "ona@example.org")
    await store.confirm(
        database, settings, confirm_link(body(smtp_server.messages[-1])).rsplit("/", 1)[1]
    )
    async with database.session() as session:
        assert not await is_suppressed(session, settings, "ona@example.org")


async def test_link_from_before_unsubscribe_does_not_resubscribe(
    database: Database, settings: Settings, smtp_server: SmtpServer
) -> None:
    first = await store.signup(database, settings, "ona@example.org")
    await store.send_due_mail(database, settings, first.subscriber_id)
    old_token = confirm_link(body(smtp_server.messages[0])).rsplit("/", 1)[1]
    await store.unsubscribe(database, settings, first.subscriber_id)
    await store.signup(database, settings, "ona@example.org")
    with pytest.raises(store.InvalidLink):
        await store.confirm(database, settings, old_token)


async def test_preferences_update_and_validation(database: Database, settings: Settings) -> None:
    added = await store.add(database, settings, "ona@example.org", confirmed=True)
    view = await store.update_preferences(
        database,
        settings,
        added.subscriber.id,
        name="  Ona  Šimonytė ",
        topics=["foreign-affairs"],
        frequency="immediately",
        origin=ORIGIN,
    )
    assert (view.name, view.topics, view.frequency) == (
        "Ona Šimonytė",
        ("foreign-affairs",),
        Frequency.IMMEDIATELY,
    )
    with pytest.raises(store.InvalidField) as bad_name:
        await store.update_preferences(
            database, settings, added.subscriber.id, name="a\r\nBcc: x@evil.example",
            topics=[], frequency="daily",
        )  # fmt: skip
    assert bad_name.value.field == "name"
    with pytest.raises(store.InvalidField):
        await store.update_preferences(
            database, settings, added.subscriber.id, name="x" * 201, topics=[], frequency="daily"
        )
    with pytest.raises(store.InvalidField):
        await store.update_preferences(
            database, settings, added.subscriber.id, name=None, topics=["nope"], frequency="daily"
        )
    with pytest.raises(store.InvalidField):
        await store.update_preferences(
            database, settings, added.subscriber.id, name=None, topics=[], frequency="hourly"
        )
    unchanged = await store.get_subscriber(database, added.subscriber.id)
    assert unchanged == view


@pytest.mark.parametrize(
    "address",
    ["", "plain", "a@b", "Žygimantas@example.lt", "a@@example.org", "a\r\n@example.org",
     "a@example.org\nBcc: b@x.org", "x" * 250 + "@example.org", "a@localhost",
     "Name <a@example.org>"],
)  # fmt: skip
def test_invalid_addresses_are_refused(address: str) -> None:
    with pytest.raises(store.InvalidAddress):
        store.normalize_address(address)


async def test_export_holds_everything_and_erase_keeps_only_the_hash(
    database: Database, settings: Settings
) -> None:
    signed = await store.signup(
        database, settings, "Ona@Example.org", name="Ona", topics=["health"], origin=ORIGIN
    )
    async with database.transaction() as session:
        # How far this reader was planned: erasure removes it with the reader.
        session.add(
            Watermark(subscriber_id=signed.subscriber_id, through_release_id=1, planned_at=utcnow())
        )
    data = await store.export_data(database, settings, signed.subscriber_id)
    assert data["subscriber"]["email"] == "Ona@example.org"
    assert data["subscriber"]["topics"] == [{"slug": "health", "name": "Health"}]
    assert data["consent_records"][0]["ip"] == ORIGIN.ip
    assert data["consent_records"][0]["user_agent"] == ORIGIN.user_agent

    await store.erase(database, settings, signed.subscriber_id, origin=ORIGIN)
    assert await store.get_subscriber(database, signed.subscriber_id) is None
    with pytest.raises(store.NotFound):
        await store.export_data(database, settings, signed.subscriber_id)
    async with database.session() as session:
        events = (await session.scalars(select(ConsentEvent))).all()
        hashes = (await session.scalars(select(Suppression.email_hash))).all()
        assert (await session.scalars(select(Watermark))).all() == []
    assert {e.action for e in events} == {"signup", "erase"}
    for event in events:
        assert event.subscriber_id is None
        assert (event.ip, event.user_agent, event.form_url) == (None, None, None)
        assert "ona" not in repr(event.details).lower()
    assert hashes == [email_hash(settings, "ona@example.org")]
    with pytest.raises(store.SuppressedAddress):
        await store.add(database, settings, "ona@example.org", confirmed=True)


async def test_add_rules(database: Database, settings: Settings) -> None:
    with pytest.raises(store.InvalidAddress):
        await store.add(database, settings, "not an address")
    added = await store.add(database, settings, "ona@example.org", name="Ona")
    assert (added.created, added.subscriber.status, added.confirmation_due) == (
        True,
        SubscriberStatus.PENDING,
        True,
    )
    confirmed = await store.add(database, settings, "ona@example.org", confirmed=True)
    assert (confirmed.created, confirmed.outcome) == (False, "confirmed")
    assert confirmed.subscriber.status is SubscriberStatus.CONFIRMED
    assert confirmed.subscriber.name == "Ona"

    await store.unsubscribe(database, settings, added.subscriber.id)
    with pytest.raises(store.SuppressedAddress):
        await store.add(database, settings, "ona@example.org", confirmed=True)
    back = await store.add(database, settings, "ona@example.org", confirmed=True, resubscribe=True)
    assert back.subscriber.status is SubscriberStatus.CONFIRMED
    async with database.session() as session:
        assert not await is_suppressed(session, settings, "ona@example.org")

    assert await store.remove(database, settings, "ONA@example.org")
    assert not await store.remove(database, settings, "ona@example.org")
    assert await store.find_subscriber(database, "ona@example.org") is None


async def test_import_reports_bad_rows_merges_duplicates_and_skips_suppressed(
    database: Database, settings: Settings
) -> None:
    await store.add(database, settings, "kept@example.org", topics=["health"], confirmed=True)
    await store.add(database, settings, "gone@example.org", confirmed=True)
    await store.remove(database, settings, "gone@example.org")
    csv_text = (
        "Email,Name,Topics\n"
        "ona@example.org,Ona,economy\n"
        "not-an-address,,\n"
        "ONA@example.org,,Health\n"
        "kept@example.org,Kept,economy\n"
        "x@example.org,,astrology\n"
        '"multi@example.org","Line\nbreak",\n'
        "gone@example.org,,\n"
        "\n"
        "petras@example.lt,Petras Žygimantas,foreign-affairs;health\n"
    )
    report = await store.import_csv(
        database, settings, io.StringIO(csv_text), status=SubscriberStatus.CONFIRMED
    )
    assert [line for line, _ in report.errors] == [3, 6, 7]
    assert "astrology" in report.errors[1][1]
    assert report.suppressed == [(9, "gone@example.org is on the suppression list")]
    assert (report.imported, report.updated, report.merged_duplicates) == (2, 1, 1)

    ona = await store.find_subscriber(database, "ona@example.org")
    assert ona is not None
    assert (ona.status, ona.name, ona.topics) == (
        SubscriberStatus.CONFIRMED,
        "Ona",
        ("economy", "health"),
    )
    kept = await store.find_subscriber(database, "kept@example.org")
    assert kept is not None and kept.topics == ("economy", "health") and kept.name == "Kept"
    assert await store.find_subscriber(database, "gone@example.org") is None
    assert len(await consents(database, "import")) == 3


async def test_import_in_chunks_merges_repeats_and_numbers_lines_like_one_read(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The import writes a few rows at a time: with chunks of two rows, every repeat
    # below comes chunks after its first row, and the result must still be that of
    # the rows merged first (topics united, no topics meaning all, the first name).
    await store.add(database, settings, "kept@example.org", topics=["health"], confirmed=True)
    await store.add(database, settings, "named@example.org", confirmed=True)
    await store.add(database, settings, "gone@example.org", confirmed=True)
    await store.remove(database, settings, "gone@example.org")
    csv_text = (
        "email,name,topics\n"
        "ona@example.org,,economy\n"  # 2
        "kept@example.org,,economy\n"  # 3
        "gone@example.org,,\n"  # 4
        "jonas@example.org,Jonas,health\n"  # 5
        "named@example.org,,\n"  # 6
        '"bad@example.org","Line\nbreak",\n'  # 7-8: one record on two lines
        "x@example.org,,astrology\n"  # 9
        "ONA@example.org,Ona,health\n"  # 10
        "kept@example.org,,\n"  # 11: "all topics" merged: no topic is added to kept
        "GONE@example.org,,\n"  # 12
        "jonas@example.org,Other,\n"  # 13: all topics; the first name stays
        "named@example.org,Named,\n"  # 14
        "not-an-address,,\n"  # 15
        "ona@example.org,,foreign-affairs\n"  # 16
    )
    whole = await store.import_csv(
        database, settings, io.StringIO(csv_text), status=SubscriberStatus.CONFIRMED, dry_run=True
    )
    monkeypatch.setattr(bulk, "_IMPORT_CHUNK", 2)
    report = await store.import_csv(
        database, settings, io.StringIO(csv_text), status=SubscriberStatus.CONFIRMED
    )
    assert report == whole
    assert [line for line, _ in report.errors] == [7, 9, 15]
    assert report.suppressed == [(4, "gone@example.org is on the suppression list")]
    assert (report.imported, report.updated, report.unchanged) == (2, 1, 1)
    assert report.merged_duplicates == 6

    ona = await store.find_subscriber(database, "ona@example.org")
    assert ona is not None
    assert (ona.name, ona.topics) == ("Ona", ("economy", "health", "foreign-affairs"))
    jonas = await store.find_subscriber(database, "jonas@example.org")
    assert jonas is not None and (jonas.name, jonas.topics) == ("Jonas", ())
    kept = await store.find_subscriber(database, "kept@example.org")
    assert kept is not None and (kept.name, kept.topics) == (None, ("health",))
    named = await store.find_subscriber(database, "named@example.org")
    assert named is not None and named.name == "Named"
    assert await store.find_subscriber(database, "gone@example.org") is None
    # One consent record per address, naming the line of its first row.
    lines = sorted(event.details["line"] for event in await consents(database, "import"))
    assert lines == [2, 5, 6]


class _Pipe(io.StringIO):
    """Standard input from a pipe: read once, no going back."""

    def seekable(self) -> bool:
        return False


async def test_import_reads_a_stream_that_cannot_be_rewound(
    database: Database, settings: Settings
) -> None:
    # The import reads its file twice; a pipe is first copied aside, so it loses nothing.
    report = await store.import_csv(
        database,
        settings,
        _Pipe("email,name\na@example.org,A\nbad,\nA@example.org,\nb@example.org,B\n"),
        status=SubscriberStatus.CONFIRMED,
    )
    assert (report.imported, report.merged_duplicates) == (2, 1)
    assert [line for line, _ in report.errors] == [3]
    a = await store.find_subscriber(database, "a@example.org")
    assert a is not None and a.name == "A"


async def test_pending_import_is_mailed_by_the_resend_job(
    database: Database, settings: Settings, smtp_server: SmtpServer
) -> None:
    report = await store.import_csv(
        database, settings, io.StringIO("email\na@example.org\nb@example.org\n")
    )
    assert report.imported == 2
    assert await store.retry_queued_mail(database, settings) == 2
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        "a@example.org",
        "b@example.org",
    ]


async def test_import_refuses_files_without_email_column(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(store.InvalidFile, match="no 'email' column"):
        await store.import_csv(database, settings, io.StringIO("mail,name\na@example.org,A\n"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("email,name\nona@example.org,Šimonytė\n".encode("cp1257"))
    with pytest.raises(store.InvalidFile, match="not UTF-8"):
        await store.import_csv(database, settings, latin)
    with pytest.raises(store.InvalidFile, match="no such file"):
        await store.import_csv(database, settings, tmp_path / "missing.csv")


async def test_large_import_is_complete_and_idempotent(database_url: str, tmp_path: Path) -> None:
    # PostgreSQL imports by COPY, SQLite by chunked INSERTs: both at volume.
    from mailer.context import AppContext

    settings = make_settings(tmp_path, database_url, topics=TOPICS)
    async with AppContext(settings=settings).database() as database:
        await _large_import(database, settings, tmp_path)


async def _large_import(database: Database, settings: Settings, tmp_path: Path) -> None:
    rows = 20_000
    path = tmp_path / "big.csv"
    lines = ["email,name,topics"] + [
        f"reader{i}@example{i % 40}.org,Reader {i},{'economy' if i % 2 else 'economy;health'}"
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = await store.import_csv(database, settings, path, status=SubscriberStatus.CONFIRMED)
    assert (report.imported, report.errors) == (rows, [])
    again = await store.import_csv(database, settings, path, status=SubscriberStatus.CONFIRMED)
    assert (again.imported, again.updated, again.unchanged) == (0, 0, rows)
    counts = await store.count_by_status(database)
    assert counts["confirmed"] == rows
    last = await store.find_subscriber(database, f"reader{rows - 1}@example{(rows - 1) % 40}.org")
    assert last is not None and last.topics == ("economy",) and last.name == f"Reader {rows - 1}"
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(ConsentEvent)) == rows
    # Imported names are searchable with accents folded, like names added one by one.
    found = await store.search_subscribers(database, settings, search="READER 1999")
    assert [v.email for v in found.items] == [
        f"reader{n}@example{n % 40}.org" for n in [*range(19999, 19989, -1), 1999]
    ]
    assert str(found.total) == "11"
    if not database.is_sqlite:
        # Every table the import filled has statistics of its size: PostgreSQL plans
        # a sender's topic lookups from them (an unanalyzed table was read whole).
        async with database.session() as session:
            sizes = dict(
                (
                    await session.execute(
                        text(
                            "SELECT relname, reltuples FROM pg_class WHERE relname IN "
                            "('subscribers', 'subscriber_topics', 'consent_events')"
                        )
                    )
                ).all()
            )
        assert sizes == {
            "subscribers": rows,
            "subscriber_topics": rows + rows // 2,
            "consent_events": rows,
        }


async def test_list_and_export_round_trip(database: Database, settings: Settings) -> None:
    await store.add(database, settings, "a@example.org", name="Ą, \"quoted\"", topics=["health"],
                    confirmed=True)  # fmt: skip
    await store.signup(database, settings, "b@example.org")
    assert [s.email for s in await store.list_subscribers(database)] == [
        "a@example.org",
        "b@example.org",
    ]
    pending = await store.list_subscribers(database, status=SubscriberStatus.PENDING)
    assert [s.email for s in pending] == ["b@example.org"]
    out = io.StringIO()
    assert store.export_csv(await store.list_subscribers(database), out) == 2
    await store.remove(database, settings, "a@example.org")
    async with database.transaction() as session:
        await session.execute(Suppression.__table__.delete())
    out.seek(0)
    report = await store.import_csv(database, settings, out, status=SubscriberStatus.CONFIRMED)
    assert report.errors == []
    back = await store.find_subscriber(database, "a@example.org")
    assert back is not None and back.name == 'Ą, "quoted"' and back.topics == ("health",)


def test_links_point_at_the_site(settings: Settings) -> None:
    assert link(settings, Purpose.UNSUBSCRIBE, 5, "key").startswith(
        "http://testserver/unsubscribe/"
    )
