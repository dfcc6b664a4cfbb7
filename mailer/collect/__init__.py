"""The collector: where the digest's content comes from.

Sources (feeds, listing pages, drop folders) are fetched or read, each release is
extracted and cleaned, matched against what is stored (same GUID, same URL, same
or nearly the same text), tagged with topics and stored.

Entry points for the other parts of mailer:

- ``collect_source(database, settings, name)`` one source now (scheduler jobs).
- ``collect_all(database, settings, only=None, progress=None)`` every enabled source.
- ``ingest_paths(database, settings, paths, dry_run=False)`` release files by hand.
- ``retag_release(session, settings, release_id, topic_slugs=None)`` set topics.
"""

from mailer.collect.extract import Candidate, EntryError
from mailer.collect.feeds import SourceError
from mailer.collect.ingest import INGEST_SOURCE, IngestedRelease, IngestReport, ingest_paths
from mailer.collect.runner import SourceRunResult, collect_all, collect_source
from mailer.collect.topics import retag_release

__all__ = [
    "INGEST_SOURCE",
    "Candidate",
    "EntryError",
    "IngestReport",
    "IngestedRelease",
    "SourceError",
    "SourceRunResult",
    "collect_all",
    "collect_source",
    "ingest_paths",
    "retag_release",
]
