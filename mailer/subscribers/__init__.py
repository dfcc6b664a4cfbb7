"""The subscriber store: signup, double opt-in, preferences, unsubscribe, data export,
erasure, and the bulk operations the command line and the admin use.

Every entry point is an async function over a :class:`~mailer.db.Database`, so the web
form, the CLI, the admin and the JSON API share one set of rules:

* An address is validated with email-validator (syntax only, no DNS) and identified
  by its lower-cased form (``Subscriber.email_key``).
* A subscriber with no topic rows receives every topic ("none ticked means all").
* Signing up stores a *pending* subscriber and a consent record, and sends a
  confirmation mail whose link carries ``confirm_nonce``; confirming clears the
  nonce, so each link works once. At most one confirmation mail goes to an address
  per ``signup.confirmation_interval``. Every mail about a subscription goes through
  one door (:func:`send_due_mail`), which never raises an SMTP error: a mail that
  cannot be sent now stays queued and :func:`retry_queued_mail` sends it later.
* Unsubscribing and erasing put the address on the suppression list; only a new
  confirmation (the person proving again that they want mail) lifts it.

The package is split along its seams: ``values`` (errors, result types,
validation), ``queries`` (reading), ``optin`` (signup, confirmation, the links in
every email, an operator's add), ``mail`` (the confirmation and notices),
``privacy`` (an operator's record of one subscriber, data export and erasure),
``bulk`` (CSV import and export) and ``files`` (the admin's staged upload, the
export every shell offers). Callers import from ``mailer.subscribers``.
"""

from __future__ import annotations

from mailer.subscribers.bulk import EXPORT_COLUMNS, export_csv, import_csv, suppression_text
from mailer.subscribers.files import (
    EXPORT_FORMATS,
    MAX_IMPORT_BYTES,
    FileTooLarge,
    StagedImport,
    UnknownUpload,
    export_subscribers,
    import_staged,
    import_status,
    stage_import,
)
from mailer.subscribers.mail import retry_queued_mail, send_due_mail
from mailer.subscribers.optin import (
    add,
    confirm,
    pending_confirmation,
    signup,
    subscriber_for_link,
    unsubscribe,
    unsubscribe_and_get,
    update_preferences,
)
from mailer.subscribers.privacy import (
    SubscriberRecord,
    erase,
    export_data,
    remove,
    subscriber_record,
)
from mailer.subscribers.queries import (
    Count,
    SubscriberPage,
    active_topics,
    count_by_status,
    counts_by_status,
    find_subscriber,
    get_subscriber,
    link_for,
    link_key_of,
    list_subscribers,
    search_subscribers,
    subscriber_ids_with_status,
    suppressions_for,
)
from mailer.subscribers.values import (
    BOUNCE_REASONS,
    IMPORT_STATUSES,
    MAX_ADDRESS_LENGTH,
    MAX_NAME_LENGTH,
    SHOWN_STATUSES,
    AddResult,
    ConfirmResult,
    ExpiredLink,
    ImportReport,
    InvalidAddress,
    InvalidField,
    InvalidFields,
    InvalidFile,
    InvalidLink,
    MailOutcome,
    NotFound,
    Origin,
    ShownStatus,
    SignupResult,
    StaleLink,
    SubscriberError,
    SubscriberView,
    SuppressedAddress,
    TooManyAttempts,
    TopicView,
    Unsubscribed,
    clean_name,
    mailbox_key,
    matches_status,
    normalize_address,
    parse_frequency,
    shown_status,
)

__all__ = [
    "BOUNCE_REASONS",
    "EXPORT_COLUMNS",
    "EXPORT_FORMATS",
    "IMPORT_STATUSES",
    "MAX_ADDRESS_LENGTH",
    "MAX_IMPORT_BYTES",
    "MAX_NAME_LENGTH",
    "SHOWN_STATUSES",
    "AddResult",
    "ConfirmResult",
    "Count",
    "ExpiredLink",
    "FileTooLarge",
    "ImportReport",
    "InvalidAddress",
    "InvalidField",
    "InvalidFields",
    "InvalidFile",
    "InvalidLink",
    "MailOutcome",
    "NotFound",
    "Origin",
    "ShownStatus",
    "SignupResult",
    "StagedImport",
    "StaleLink",
    "SubscriberError",
    "SubscriberPage",
    "SubscriberRecord",
    "SubscriberView",
    "SuppressedAddress",
    "TooManyAttempts",
    "TopicView",
    "UnknownUpload",
    "Unsubscribed",
    "active_topics",
    "add",
    "clean_name",
    "confirm",
    "count_by_status",
    "counts_by_status",
    "erase",
    "export_csv",
    "export_data",
    "export_subscribers",
    "find_subscriber",
    "get_subscriber",
    "import_csv",
    "import_staged",
    "import_status",
    "link_for",
    "link_key_of",
    "list_subscribers",
    "mailbox_key",
    "matches_status",
    "normalize_address",
    "parse_frequency",
    "pending_confirmation",
    "remove",
    "retry_queued_mail",
    "search_subscribers",
    "send_due_mail",
    "shown_status",
    "signup",
    "stage_import",
    "subscriber_for_link",
    "subscriber_ids_with_status",
    "subscriber_record",
    "suppression_text",
    "suppressions_for",
    "unsubscribe",
    "unsubscribe_and_get",
    "update_preferences",
]
