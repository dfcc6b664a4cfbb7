"""Every command group, in the order `mailer --help` lists them."""

from mailer.cli.db import db
from mailer.cli.digest import digest
from mailer.cli.dkim import dkim
from mailer.cli.serve import serve
from mailer.cli.subscribers import subscribers

ALL = [db, subscribers, digest, dkim, serve]
