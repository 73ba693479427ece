"""sa_pgtq schema version 5: a job's meta (trace context) and an index of failed jobs.

Revision ID: sa_pgtq_0005
Revises: sa_pgtq_0004
Create Date: 2026-12-06
"""

from alembic import op

from sa_pgtq import schema

revision = "sa_pgtq_0005"
down_revision = "sa_pgtq_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.upgrade(op, from_version=4, to_version=5, table_name=schema.migration_table_name())


def downgrade() -> None:
    schema.downgrade(op, from_version=5, to_version=4, table_name=schema.migration_table_name())
