"""sa_pgtq schema version 1: the queue table, its fetch indexes and NOTIFY trigger.

Revision ID: sa_pgtq_0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

from sa_pgtq import schema

revision = "sa_pgtq_0001"
down_revision = None
branch_labels = ("sa_pgtq",)
depends_on = None


def upgrade() -> None:
    schema.upgrade(op, from_version=0, to_version=1, table_name=schema.migration_table_name())


def downgrade() -> None:
    schema.downgrade(op, from_version=1, to_version=0, table_name=schema.migration_table_name())
