"""`mailer digest preview` shows exactly what a send would deliver, and changes
nothing; MessageComposer.load builds the same message from the database."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.exc import StatementError

from mailer.cli import main
from mailer.config import Settings
from mailer.context import AppContext
from mailer.digest import plan_digest
from mailer.message import MessageComposer
from mailer.models import ContentGroup, Delivery, Digest, Subscriber, Watermark, utcnow
from tests.digest.conftest import TOPICS, add_release, add_subscriber, new_digest


def write_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "database": {"url": database_url},
                "secret_key": "test-secret-key-0123456789abcdef",
                "site": {"name": "Test Press Office", "postal_address": "1 Test Street, Vilnius"},
                "sender": {
                    "from": "Press Office <press@example.org>",
                    "list_id": "press.example.org",
                },
                "topics": TOPICS,
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    return path


def seed(settings: Settings) -> None:
    async def work() -> None:
        async with AppContext(settings=settings).database() as database:
            async with database.transaction() as session:
                await add_release(
                    session,
                    "Žygimantas presents the budget",
                    topics=["economy"],
                    published_at=utcnow() - timedelta(hours=2),
                )
                await add_release(
                    session,
                    "Hospital funding grows",
                    topics=["health"],
                    published_at=utcnow() - timedelta(hours=1),
                )
                await add_release(
                    session, "Archive item", published_at=utcnow() - timedelta(days=300)
                )
                await add_subscriber(
                    session, "ruta@example.lt", name="Rūta Šimonytė", topics=["economy"]
                )

    asyncio.run(work())


def counts(settings: Settings) -> tuple[int, int, int, int]:
    async def work() -> tuple[int, int, int, int]:
        async with AppContext(settings=settings).database() as database:
            async with database.session() as session:
                return (
                    await session.scalar(select(func.count()).select_from(Digest)),
                    await session.scalar(select(func.count()).select_from(Delivery)),
                    await session.scalar(select(func.count()).select_from(ContentGroup)),
                    await session.scalar(select(func.count()).select_from(Watermark)),
                )

    return asyncio.run(work())


def without_tokens(text: str) -> str:
    # Digest public ids differ between the preview and the real send, and a preview
    # (no send yet, nothing written) has no "?send=" naming it in its unsubscribe link.
    return re.sub(r"/(unsubscribe|preferences|digests)/[\w.\-]+(\?send=\d+)?", r"/\1/TOKEN", text)


def text_part(data: bytes) -> str:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    return parsed.get_body(("plain",)).get_content().replace("\r\n", "\n")


def test_preview_for_a_subscriber_is_what_a_send_delivers(
    tmp_path: Path, database_url: str, settings: Settings
) -> None:
    seed(settings)
    config = write_config(tmp_path, database_url)
    out = tmp_path / "preview"
    result = CliRunner().invoke(
        main,
        [
            "--config",
            str(config),
            "digest",
            "preview",
            "--subscriber",
            "RUTA@example.lt",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Releases: 1" in result.output
    eml = out / "digest-ruta-example-lt.eml"
    html = out / "digest-ruta-example-lt.html"
    parsed = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert parsed["To"].addresses[0].display_name == "Rūta Šimonytė"
    assert parsed["Subject"] == "Test Press Office: Žygimantas presents the budget"
    assert parsed["List-Unsubscribe"] is not None
    html_part = parsed.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert html.read_text(encoding="utf-8") == html_part
    assert "Hospital funding grows" not in text_part(eml.read_bytes())

    # Nothing was recorded: no send, no outbox row, nothing marked as sent.
    assert counts(settings) == (0, 0, 0, 0)

    # The real send produces the same message.
    async def send() -> bytes:
        async with AppContext(settings=settings).database() as database:
            async with database.transaction() as session:
                digest = await new_digest(session)
                await plan_digest(session, settings, digest)
                delivery = (await session.scalars(select(Delivery))).one()
                composer = await MessageComposer.load(
                    session, settings, delivery.release_ids, digest_id=digest.id
                )
                reader = await session.get(Subscriber, delivery.subscriber_id)
                assert reader is not None
                return composer.compose(
                    delivery.id,
                    delivery.subscriber_id,
                    delivery.email,
                    "Rūta Šimonytė",
                    delivery.release_ids,
                    link_key=reader.link_key,
                ).data

    sent = asyncio.run(send())
    assert without_tokens(text_part(sent)) == without_tokens(text_part(eml.read_bytes()))

    again = CliRunner().invoke(
        main, ["--config", str(config), "digest", "preview", "--subscriber", "ruta@example.lt"]
    )
    assert again.exit_code == 0
    assert "No digest would be sent to ruta@example.lt now" in again.output


def test_preview_without_subscriber_is_a_sample_of_the_newest(
    tmp_path: Path, database_url: str, settings: Settings
) -> None:
    seed(settings)
    config = write_config(tmp_path, database_url)
    result = CliRunner().invoke(main, ["--config", str(config), "digest", "preview"])
    assert result.exit_code == 0, result.output
    eml = tmp_path / "data" / "preview" / "digest-reader-example-org.eml"
    text = text_part(eml.read_bytes())
    positions = [text.index(t) for t in ("Hospital funding", "Žygimantas presents", "Archive item")]
    assert positions == sorted(positions)
    assert counts(settings) == (0, 0, 0, 0)


def test_preview_errors(tmp_path: Path, database_url: str, settings: Settings) -> None:
    seed(settings)
    config = write_config(tmp_path, database_url)
    unknown = CliRunner().invoke(
        main, ["--config", str(config), "digest", "preview", "--subscriber", "who@example.org"]
    )
    assert unknown.exit_code == 2
    assert "no subscriber with the address who@example.org" in unknown.output


async def test_composer_loads_releases_sources_and_topic_choices(
    database, settings: Settings
) -> None:
    async with database.transaction() as session:
        merged = await add_release(
            session,
            "Budget approved",
            topics=["economy"],
            sources=[
                ("Government", "https://gov.example.lt/b"),
                ("Aggregator", "https://agg.example.com/b"),
            ],
        )
        health = await add_release(session, "Hospital opens", topics=["health"])
        both = await add_subscriber(session, "both@example.org", topics=["economy", "health"])
        await add_subscriber(session, "one@example.org", topics=["economy"])

    async with database.session() as session:
        composer = await MessageComposer.load(
            session, settings, [merged.id], subscriber_ids=[both.id]
        )
        assert composer.has_releases([merged.id]) and not composer.has_releases([health.id])
        await composer.add_releases(session, [health.id, 999_999])
        assert composer.has_releases([merged.id, health.id, 999_999])

    text = text_part(
        composer.compose(
            1, both.id, "both@example.org", None, [merged.id, health.id], link_key="test-key"
        ).data
    )
    # One release, however many sources carried it; their names stay internal.
    assert "Aggregator" not in text and "agg.example.com" not in text
    assert "ECONOMY" in text and "HEALTH" in text


@pytest.mark.parametrize("frequency", ["hourly"])
async def test_unknown_frequency_is_refused(database, settings: Settings, frequency: str) -> None:
    from mailer.send import SendError, schedule_digest, start_digest

    choices = "choose one of all, immediately, daily, weekly"
    with pytest.raises(SendError, match=f"unknown audience 'hourly'; {choices}"):
        await start_digest(database, settings, frequency=frequency)
    with pytest.raises(SendError, match=f"unknown audience 'hourly'; {choices}"):
        await schedule_digest(database, scheduled_for=None, frequency=frequency)
    # Not even a row written by hand gets past the column's vocabulary.
    with pytest.raises(StatementError, match="'hourly' is not among the defined enum values"):
        async with database.transaction() as session:
            await new_digest(session, frequency)
