"""Every command group, in the order `mailer --help` lists them."""

from mailer.cli.admin import admin
from mailer.cli.collect import COMMANDS as COLLECT_COMMANDS
from mailer.cli.db import db
from mailer.cli.digest import digest
from mailer.cli.dkim import dkim
from mailer.cli.send import SEND_COMMANDS, worker
from mailer.cli.serve import serve
from mailer.cli.subscribers import subscribers

for _command in SEND_COMMANDS:
    digest.add_command(_command)

ALL = [db, subscribers, *COLLECT_COMMANDS, digest, dkim, admin, serve, worker]
