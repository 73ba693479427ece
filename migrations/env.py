"""Alembic environment for running sa_pgtq's chain on its own (repo-level alembic.ini).

The URL comes from `-x url=...`, else DATABASE_URL. A host application uses its
own env.py instead and only points version_locations at these revisions.
"""

from __future__ import annotations

import os

from alembic import context

from sa_pgtq.binding import engine_from_url
from sa_pgtq.models import Base

config = context.config
url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
if not url:
    raise SystemExit("no database: pass -x url=postgresql://... or set DATABASE_URL")

engine = engine_from_url(url)
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    context.run_migrations()
engine.dispose()
