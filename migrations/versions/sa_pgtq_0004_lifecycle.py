"""sa_pgtq schema version 4: the job lifecycle (results, unique keys, locks, abort, pause, cron).

Revision ID: sa_pgtq_0004
Revises: sa_pgtq_0003
Create Date: 2026-12-06
"""

from alembic import op

from sa_pgtq import schema

revision = "sa_pgtq_0004"
down_revision = "sa_pgtq_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.upgrade(op, from_version=3, to_version=4, table_name=schema.migration_table_name())


def downgrade() -> None:
    schema.downgrade(op, from_version=4, to_version=3, table_name=schema.migration_table_name())
