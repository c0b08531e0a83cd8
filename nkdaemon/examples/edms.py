"""The EDMS example schema (see shared EDMS.md), one SQLAlchemy Core definition for both dialects.

Twelve tables, each with a generated integer ``id``: reference data seeded by the
application (roles, document_types), composite natural keys made of foreign keys
(user_roles, document_states, document_versions, document_dependencies), a two-table cycle
(document_workflows <-> document_states), a self-reference (documents.parent_id), and the
types that must round-trip exactly (numeric, timestamptz, bytea, jsonb, arrays, uuid, text).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

JSONB = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TEXT_ARRAY = sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")
TZ = sa.DateTime(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


roles = sa.Table(
    "roles",
    metadata,
    _id(),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("description", sa.Text),
)

users = sa.Table(
    "users",
    metadata,
    _id(),
    sa.Column("username", sa.String(150), nullable=False, unique=True),
    sa.Column("email", sa.String(254)),
    sa.Column("full_name", sa.Text),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", TZ, nullable=False),
)

user_roles = sa.Table(
    "user_roles",
    metadata,
    _id(),
    sa.Column("user_id", sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("role_id", sa.ForeignKey("roles.id", ondelete="CASCADE"), nullable=False),
    sa.Column("granted_at", TZ, nullable=False),
    sa.UniqueConstraint("user_id", "role_id", name="uq_user_roles"),
)

document_types = sa.Table(
    "document_types",
    metadata,
    _id(),
    sa.Column("code", sa.String(32), nullable=False, unique=True),
    sa.Column("label", sa.Text, nullable=False),
)

document_sources = sa.Table(
    "document_sources",
    metadata,
    _id(),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("url", sa.Text),
)

document_workflows = sa.Table(
    "document_workflows",
    metadata,
    _id(),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column(
        "initial_state_id",
        sa.ForeignKey(
            "document_states.id",
            use_alter=True,
            name="fk_workflow_initial_state",
            ondelete="SET NULL",
        ),
        nullable=True,
    ),
)

document_states = sa.Table(
    "document_states",
    metadata,
    _id(),
    sa.Column(
        "workflow_id", sa.ForeignKey("document_workflows.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("code", sa.String(32), nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.UniqueConstraint("workflow_id", "code", name="uq_state_code"),
)

documents = sa.Table(
    "documents",
    metadata,
    _id(),
    sa.Column("document_number", sa.String(40), nullable=False, unique=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("type_id", sa.ForeignKey("document_types.id"), nullable=False),
    sa.Column("source_id", sa.ForeignKey("document_sources.id"), nullable=True),
    sa.Column("state_id", sa.ForeignKey("document_states.id"), nullable=True),
    sa.Column("author_id", sa.ForeignKey("users.id"), nullable=False),
    sa.Column("parent_id", sa.ForeignKey("documents.id", ondelete="SET NULL"), nullable=True),
    sa.Column("fee", sa.Numeric(14, 4)),
    sa.Column("tags", TEXT_ARRAY),
    sa.Column("created_at", TZ, nullable=False),
)

document_versions = sa.Table(
    "document_versions",
    metadata,
    _id(),
    sa.Column("document_id", sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    sa.Column("version_number", sa.Integer, nullable=False),
    sa.Column("created_by", sa.ForeignKey("users.id"), nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", TZ, nullable=False),
    sa.UniqueConstraint("document_id", "version_number", name="uq_version"),
)

document_dependencies = sa.Table(
    "document_dependencies",
    metadata,
    _id(),
    sa.Column("document_id", sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    sa.Column("depends_on_id", sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("note", sa.Text),
    sa.UniqueConstraint("document_id", "depends_on_id", "kind", name="uq_dependency"),
)

document_comments = sa.Table(
    "document_comments",
    metadata,
    _id(),
    sa.Column("uuid", sa.Uuid, nullable=False, unique=True),
    sa.Column("document_id", sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
    sa.Column("author_id", sa.ForeignKey("users.id"), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", TZ, nullable=False),
)

placeholder_definitions = sa.Table(
    "placeholder_definitions",
    metadata,
    _id(),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("default_value", JSONB),
)

TABLES = [t.name for t in metadata.sorted_tables]

ROLES = ["admin", "author", "reviewer", "approver", "reader", "auditor", "archivist"]
DOCUMENT_TYPES = [
    ("SOP", "Standard operating procedure"),
    ("POL", "Policy"),
    ("FRM", "Form"),
    ("WI", "Work instruction"),
    ("RPT", "Report"),
]

T0 = datetime(2026, 1, 1, 9, 0, 0, 123456, tzinfo=UTC)


def create_schema(engine: sa.Engine) -> None:
    """Create the tables (from a fresh copy of the definitions each time: SQLAlchemy marks
    a constraint it added with ALTER TABLE, which would drop the cycle on a later SQLite)."""
    fresh = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(fresh)
    fresh.create_all(engine)


def seed_reference(conn: sa.Connection, *, reverse: bool = False) -> None:
    """The rows the application's own migrations insert (in reverse: different ids)."""
    role_rows = [{"name": n, "description": f"{n} role"} for n in ROLES]
    type_rows = [{"code": c, "label": label} for c, label in DOCUMENT_TYPES]
    if reverse:
        role_rows.reverse()
        type_rows.reverse()
    for row in role_rows:
        conn.execute(roles.insert().values(**row))
    for row in type_rows:
        conn.execute(document_types.insert().values(**row))


def seed_example(conn: sa.Connection) -> None:
    """A small, complete EDMS: every table has rows, every awkward case is present."""
    seed_reference(conn)
    conn.execute(
        document_sources.insert(),
        [{"name": "scanner", "url": "scan://1"}, {"name": "upload", "url": None}],
    )
    for name in ("alice", "bob", "chloé"):
        add_user(conn, name)
    wf = _new_id(conn.execute(document_workflows.insert().values(name="standard")))
    draft = _new_id(
        conn.execute(document_states.insert().values(workflow_id=wf, code="draft", label="Draft"))
    )
    conn.execute(document_states.insert().values(workflow_id=wf, code="approved", label="Approved"))
    conn.execute(
        document_workflows.update()
        .where(document_workflows.c.id == wf)
        .values(initial_state_id=draft)
    )
    conn.execute(
        placeholder_definitions.insert(),
        [
            {
                "name": "company",
                "default_value": {"text": "ACME ✓", "size": 12.5, "list": [1, "x", None, True]},
            },
            {"name": "empty", "default_value": None},
        ],
    )
    first = add_document(conn, "DOC-0001", author="alice")
    add_document(conn, "DOC-0002", author="bob", parent=first)


def _new_id(result: sa.CursorResult[Any]) -> Any:
    """The primary key value of the one row an INSERT made."""
    key = result.inserted_primary_key
    if key is None:
        raise ValueError("the INSERT reported no primary key")
    return key[0]


def _id_of(conn: sa.Connection, table: sa.Table, column: str, value: Any) -> int:
    return int(conn.execute(sa.select(table.c.id).where(table.c[column] == value)).scalar_one())


def add_user(conn: sa.Connection, username: str, *, roles_: tuple[str, ...] = ("reader",)) -> int:
    uid = int(
        _new_id(
            conn.execute(
                users.insert().values(
                    username=username,
                    email=f"{username}@example.com",
                    full_name=username.title(),
                    created_at=T0,
                )
            )
        )
    )
    for role in roles_:
        conn.execute(
            user_roles.insert().values(
                user_id=uid, role_id=_id_of(conn, roles, "name", role), granted_at=T0
            )
        )
    return uid


def add_document(
    conn: sa.Connection,
    number: str,
    *,
    author: str,
    type_code: str = "SOP",
    parent: int | None = None,
    content: bytes = b"\x00\x01binary\xff",
) -> int:
    author_id = _id_of(conn, users, "username", author)
    state = conn.execute(sa.select(document_states.c.id).limit(1)).scalar()
    doc = int(
        _new_id(
            conn.execute(
                documents.insert().values(
                    document_number=number,
                    title=f"Document {number} – naïve ünïcode ✓",
                    type_id=_id_of(conn, document_types, "code", type_code),
                    source_id=None,
                    state_id=state,
                    author_id=author_id,
                    parent_id=parent,
                    fee=Decimal("12.3400"),
                    tags=["a", "b,c", 'quote"d'],
                    created_at=T0 + timedelta(microseconds=1),
                )
            )
        )
    )
    conn.execute(
        document_versions.insert().values(
            document_id=doc,
            version_number=1,
            created_by=author_id,
            content=content,
            sha256=hashlib.sha256(content).hexdigest(),
            created_at=T0,
        )
    )
    conn.execute(
        document_comments.insert().values(
            uuid=uuid.uuid4(), document_id=doc, author_id=author_id, body="first ✍", created_at=T0
        )
    )
    return doc
