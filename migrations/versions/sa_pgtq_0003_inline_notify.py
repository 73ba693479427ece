"""sa_pgtq schema version 3: no NOTIFY trigger; sa_pgtq's INSERTs notify by themselves.

Revision ID: sa_pgtq_0003
Revises: sa_pgtq_0002
Create Date: 2026-11-25
"""

from alembic import op

from sa_pgtq import schema

revision = "sa_pgtq_0003"
down_revision = "sa_pgtq_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.upgrade(op, from_version=2, to_version=3, table_name=schema.migration_table_name())


def downgrade() -> None:
    schema.downgrade(op, from_version=3, to_version=2, table_name=schema.migration_table_name())
