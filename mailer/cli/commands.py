"""Every command group, in the order `mailer --help` lists them."""

from mailer.cli.db import db

ALL = [db]
