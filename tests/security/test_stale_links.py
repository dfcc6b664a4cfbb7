"""Finding 1: a link mailed to one reader must never act on another.

The review erased the newest subscriber, let a stranger sign up (SQLite handed the
stranger the erased row's id) and replayed the erased reader's old links: the
data export returned the stranger's address, name, IP and browser, and a one-click
unsubscribe from a mail client unsubscribed the stranger."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from mailer import subscribers as store
from mailer.message import MessageComposer
from mailer.models import Subscriber, SubscriberStatus
from mailer.tokens import Purpose
from tests.web.conftest import BASE_URL, Site


async def confirmed(site: Site, address: str, name: str = "Ona") -> store.SubscriberView:
    await site.subscribe(address, name=name, topics=["health"])
    confirm = site.link(site.mails(address)[-1], "confirm")
    done = await site.client.post(confirm, data={"csrf_token": await site.token()})
    assert done.status_code == 200, done.text
    view = await store.find_subscriber(site.database, address)
    assert view is not None and view.status is SubscriberStatus.CONFIRMED
    return view


def every_link_mailed(site: Site, view: store.SubscriberView) -> dict[str, str]:
    """Each kind of long-lived link a reader can hold: from the confirmation mail,
    and the ones a digest carries (built by the composer the sender uses)."""
    confirmation = site.mails(view.email)[0]
    links = {"preferences (confirmation mail)": site.link(confirmation, "preferences")}
    composer = MessageComposer(site.settings, {})
    values = composer.recipient_values(view.id, view.email, view.name, view.link_key)
    for slot in ("preferences_url", "unsubscribe_url"):
        links[f"{slot} (digest)"] = values[slot].removeprefix(BASE_URL)
    links["unsubscribe (page)"] = "/unsubscribe/" + store.link_for(
        site.settings, Purpose.UNSUBSCRIBE, view
    )
    return links


async def replay(site: Site, path: str, victim: str) -> None:
    """Every way the review used an old link; none may show or change ``victim``."""
    client = site.new_client(ip="198.51.100.9")
    kind = path.split("/")[1]
    if kind == "preferences":
        for suffix in ("", "/data.json", "/erase"):
            answer = await client.get(path + suffix)
            assert answer.status_code == 410, (path + suffix, answer.status_code)
            assert victim not in answer.text
            assert "no longer works" in answer.text
        token = await site.token(client)
        changed = await client.post(path, data={"csrf_token": token, "name": "Mallory"})
        assert changed.status_code == 410 and victim not in changed.text
        erased = await client.post(path + "/erase", data={"csrf_token": token})
        assert erased.status_code == 410
    else:
        page = await client.get(path)
        assert page.status_code == 200 and victim not in page.text
        assert "This link no longer works" in page.text
        one_click = await client.post(path, data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 200 and victim not in one_click.text
        assert "Nothing was changed" in one_click.text


async def links_seen_by_the_reader(site: Site, address: str) -> dict[str, str]:
    """The links as the reader holds them: from the mail and the pages it leads to."""
    prefs = site.link(site.mails(address)[0], "preferences")
    page = await site.client.get(prefs)
    unsubscribe = re.search(r'action="(/unsubscribe/[^"]+)"', page.text)
    assert unsubscribe, page.text
    return {"preferences": prefs, "unsubscribe": unsubscribe.group(1)}


async def test_erased_readers_links_do_not_reach_the_next_subscriber(public: Site) -> None:
    """The review's replay: erase the newest reader, a stranger signs up, old links."""
    await confirmed(public, "erased@example.org", name="Erased Reader")
    old_links = await links_seen_by_the_reader(public, "erased@example.org")
    prefs = old_links["preferences"]
    gone = await public.client.post(
        prefs + "/erase", data={"csrf_token": await public.token(path=prefs + "/erase")}
    )
    assert gone.status_code == 200
    await confirmed(public, "stranger@example.org", name="Stranger")
    for path in old_links.values():
        await replay(public, path, "stranger@example.org")
    after = await store.find_subscriber(public.database, "stranger@example.org")
    assert after is not None
    assert (after.status, after.name) == (SubscriberStatus.CONFIRMED, "Stranger")


async def _reuse_the_id(site: Site, view: store.SubscriberView) -> None:
    """What SQLite did before AUTOINCREMENT (and what a restored backup or a reset
    sequence can still do): the next row gets the freed id."""
    async with site.database.transaction() as session:
        row = await session.scalar(select(Subscriber).where(Subscriber.email_key == "next@x.org"))
        assert row is not None
        await session.delete(row)
        await session.flush()
        session.add(
            Subscriber(id=view.id, email="next@x.org", email_key="next@x.org", name="Next Reader")
        )


async def test_link_to_a_reused_id_is_refused_by_its_key(public: Site) -> None:
    """Second half of the fix: even a reused id does not revive an old link."""
    first = await confirmed(public, "first@example.org")
    old_links = every_link_mailed(public, first)
    await store.erase(public.database, public.settings, first.id)
    await store.add(public.database, public.settings, "next@x.org", confirmed=True)
    await _reuse_the_id(public, first)
    for path in old_links.values():
        await replay(public, path, "next@x.org")
    survivor = await store.find_subscriber(public.database, "next@x.org")
    assert survivor is not None and survivor.name == "Next Reader"


@pytest.mark.parametrize("ending", ["erasure-by-reader", "admin-remove", "cli-erase"])
async def test_every_long_lived_link_dies_with_the_subscription(public: Site, ending: str) -> None:
    """Erasure, an admin's remove, and a later re-signup with the same address:
    every link ever mailed to the first subscription stops working."""
    address = "reader@example.org"
    first = await confirmed(public, address)
    # The notice a repeated signup sends carries links too.
    public.clock.advance(public.settings.signup.confirmation_interval)
    await public.subscribe(address, client=public.new_client(ip="192.0.2.44"))
    old_links = every_link_mailed(public, first)
    notice = public.mails(address)[-1]
    assert "already subscribed" in str(notice["Subject"])
    old_links["preferences (already-subscribed notice)"] = public.link(notice, "preferences")
    if ending == "erasure-by-reader":
        path = old_links["preferences (confirmation mail)"] + "/erase"
        erased = await public.client.post(path, data={"csrf_token": await public.token()})
        assert erased.status_code == 200
    elif ending == "admin-remove":
        assert await store.remove(public.database, public.settings, address)
    else:
        await store.erase(public.database, public.settings, first.id)
    # The same person (or anyone typing the address) signs up again.
    public.clock.advance(public.settings.signup.confirmation_interval)
    again = await store.add(
        public.database, public.settings, address, confirmed=True, resubscribe=True
    )
    assert again.subscriber.link_key != first.link_key
    for label, path in old_links.items():
        try:
            await replay(public, path, address)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from None
    current = await store.find_subscriber(public.database, address)
    assert current is not None and current.status is SubscriberStatus.CONFIRMED


async def test_mailto_unsubscribe_kept_from_an_erased_reader_does_not_reach_the_next(
    public: Site,
) -> None:
    """The List-Unsubscribe mailto carries a token like the https link does; mailed
    to after the id went to someone else, it is kept for people and changes nobody."""
    from mailer.bounces import handle_message
    from mailer.tokens import MailTokenKind, MailTokenSigner

    first = await confirmed(public, "first@example.org")
    signer = MailTokenSigner(public.settings)
    old_token = signer.token(MailTokenKind.UNSUBSCRIBE, first.id, first.link_key)
    await store.erase(public.database, public.settings, first.id)
    await store.add(public.database, public.settings, "next@x.org", confirmed=True)
    await _reuse_the_id(public, first)
    request = (
        f"From: first@example.org\r\nTo: press+{old_token.upper()}@example.org\r\n"
        "Subject: unsubscribe\r\n\r\nunsubscribe\r\n"
    ).encode()
    handled = await handle_message(public.database, public.settings, request)
    assert not handled.consumed
    survivor = await store.find_subscriber(public.database, "next@x.org")
    assert survivor is not None and survivor.status is SubscriberStatus.PENDING
    # The same request with the token the current holder was mailed does unsubscribe.
    current = signer.token(MailTokenKind.UNSUBSCRIBE, first.id, survivor.link_key)
    handled = await handle_message(
        public.database,
        public.settings,
        request.replace(old_token.upper().encode(), current.encode()),
    )
    assert handled.consumed
    survivor = await store.find_subscriber(public.database, "next@x.org")
    assert survivor is not None and survivor.status is SubscriberStatus.UNSUBSCRIBED
