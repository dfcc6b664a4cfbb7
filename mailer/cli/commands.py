"""Every command group, in the order `mailer --help` lists them."""

from mailer.cli.db import db
from mailer.cli.subscribers import subscribers

ALL = [db, subscribers]
