"""The admin web UI under /admin: server-rendered pages for the press office.

Each area is a module of handlers; their addresses are listed in
``mailer.web.routes.ADMIN``. Every endpoint is wrapped in
:func:`mailer.web.admin.auth.requires`, which checks the session, the role and the
CSRF token (tests/admin/test_access.py walks the routes to prove it).
"""
