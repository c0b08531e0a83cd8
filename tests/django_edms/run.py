"""A manage.py for the EDMS Django project, one database per process.

    EDMS_DATABASE_URL="sqlite:////tmp/x.db sqlite:////tmp/y.db" \
        python -m tests.django_edms.run ACTION[@N]...

Actions run in order: ``migrate``, ``populate``, ``seed-reverse``, ``mutate``,
``dump:PATH[:natural]`` (Django's dumpdata; natural: --natural-foreign --natural-primary),
``load:PATH`` (Django's loaddata), ``state:PATH`` (every row by natural key, through the
ORM, as JSON); ``@N`` runs it on the N-th database of the list (default: the first), all of
one dialect. Settings are configured once per process (tests run this as a subprocess).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import django
from django.conf import settings

T0 = datetime(2026, 1, 1, 9, 0, 0, 123000, tzinfo=UTC)


CURRENT = {"alias": "default"}


class CurrentDatabase:
    """Routes every query to the database the running action works on."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return CURRENT["alias"]

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return CURRENT["alias"]

    def allow_relation(self, *args: Any, **hints: Any) -> bool:
        return True


def _alias(index: int) -> str:
    return "default" if index == 0 else f"db{index}"


def configure(urls: list[str]) -> None:
    settings.configure(
        DATABASES={_alias(i): _database(url) for i, url in enumerate(urls)},
        DATABASE_ROUTERS=[CurrentDatabase()],
        INSTALLED_APPS=["tests.django_edms.edms"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


def _database(url: str) -> dict[str, str]:
    parsed = urlparse(url)
    if parsed.scheme.startswith("postgresql"):
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parsed.path.lstrip("/"),
            "USER": parsed.username or "postgres",
            "PASSWORD": parsed.password or "",
            "HOST": parsed.hostname or "127.0.0.1",
            "PORT": str(parsed.port or 5432),
        }
    else:
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": url[len("sqlite:///") :]}
    return database


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0, database=CURRENT["alias"])


def populate() -> None:
    from tests.django_edms.edms import models as m

    for name in ["admin", "author", "reviewer", "approver", "reader", "auditor", "archivist"]:
        m.Role.objects.create(name=name, description=f"{name} role")
    m.Role.objects.create(name="gone").delete()  # a gap in the ids
    for code, label in [("SOP", "Standard operating procedure"), ("POL", "Policy"), ("WI", "Wi")]:
        m.DocumentType.objects.create(code=code, label=label)
    scanner = m.DocumentSource.objects.create(name="scanner", url="scan://1")
    m.DocumentSource.objects.create(name="upload", url=None)
    users = {}
    for name in ["alice", "bob", "chloé", "temp", "dmitri"]:
        users[name] = m.User.objects.create(
            username=name, email=f"{name}@example.com", full_name=name.title(), created_at=T0
        )
    users.pop("temp").delete()
    grants = [("alice", "admin"), ("alice", "author"), ("bob", "reader"), ("chloé", "reviewer")]
    for user, role in grants:
        m.UserRole.objects.create(
            user=users[user], role=m.Role.objects.get(name=role), granted_at=T0
        )
    workflow = m.DocumentWorkflow.objects.create(name="standard")
    draft = m.DocumentState.objects.create(workflow=workflow, code="draft", label="Draft")
    approved = m.DocumentState.objects.create(workflow=workflow, code="approved", label="Approved")
    workflow.initial_state = draft  # the workflow/state cycle
    workflow.save()
    m.DocumentWorkflow.objects.create(name="empty")
    sop = m.DocumentType.objects.get(code="SOP")
    docs = {}
    for number, author, parent, state in [
        ("DOC-0001", "alice", None, draft),
        ("DOC-0002", "bob", "DOC-0001", draft),
        ("DOC-0003", "chloé", "DOC-0002", approved),
    ]:
        docs[number] = m.Document.objects.create(
            document_number=number,
            title=f"Document {number} – naïve ünïcode ✓",
            type=sop,
            source=scanner if number != "DOC-0003" else None,
            state=state,
            author=users[author],
            parent=docs.get(parent or ""),
            fee=Decimal("12.3400") if number != "DOC-0003" else None,
            tags=["a", "b,c", 'quote"d'] if number == "DOC-0001" else None,
            created_at=T0 + timedelta(milliseconds=int(number[-1])),
        )
    docs["DOC-0001"].watchers.set([users["bob"], users["chloé"]])
    docs["DOC-0002"].watchers.set([users["alice"]])
    for number, doc in docs.items():
        for version in (1, 2) if number == "DOC-0001" else (1,):
            content = b"\x00\x01binary\xff" + number.encode() + bytes([version])
            m.DocumentVersion.objects.create(
                document=doc,
                version_number=version,
                created_by=doc.author,
                content=content,
                sha256=hashlib.sha256(content).hexdigest(),
                created_at=T0,
            )
        m.DocumentComment.objects.create(
            uuid=uuid.uuid5(uuid.NAMESPACE_URL, number),
            document=doc,
            author=doc.author,
            body="first ✍",
            created_at=T0,
        )
    m.DocumentDependency.objects.create(
        document=docs["DOC-0002"], depends_on=docs["DOC-0001"], kind="cites"
    )
    m.DocumentDependency.objects.create(
        document=docs["DOC-0003"], depends_on=docs["DOC-0001"], kind="supersedes", note="v2"
    )
    m.PlaceholderDefinition.objects.create(
        name="company", default_value={"text": "ACME ✓", "size": 12.5, "list": [1, "x", None, True]}
    )
    m.PlaceholderDefinition.objects.create(name="empty", default_value=None)


def seed_reverse() -> None:
    """A freshly initialised target: reference rows seeded in another order (other ids)."""
    from tests.django_edms.edms import models as m

    for index in range(3):
        m.User.objects.create(username=f"x{index}", created_at=T0).delete()
    for name in ["archivist", "auditor", "reader", "approver", "reviewer", "author", "admin"]:
        m.Role.objects.create(name=name, description=f"{name} role")
    for code, label in [("WI", "Wi"), ("POL", "Policy"), ("SOP", "Standard operating procedure")]:
        m.DocumentType.objects.create(code=code, label=label)


def mutate() -> None:
    """Changes after the backup: a rename, an update, a delete, an insert."""
    from tests.django_edms.edms import models as m

    bob = m.User.objects.get(username="bob")
    bob.username = "bob2"
    bob.save()
    m.Document.objects.filter(document_number="DOC-0001").update(title="Retitled")
    m.DocumentComment.objects.filter(document__document_number="DOC-0002").delete()
    parent = m.Document.objects.get(document_number="DOC-0003")
    doc = m.Document.objects.create(
        document_number="DOC-0004",
        title="new",
        type=m.DocumentType.objects.get(code="POL"),
        author=bob,
        parent=parent,
        created_at=T0 + timedelta(days=1),
    )
    doc.watchers.set([bob])


def state(path: str) -> None:
    from django.apps import apps

    out: dict[str, Any] = {"rows": {}, "ids": {}}
    for model in apps.get_app_config("edms").get_models():
        rows = {}
        for obj in model.objects.all():
            fields: dict[str, Any] = {}
            for field in model._meta.concrete_fields:
                if field.primary_key:
                    continue
                value = getattr(obj, field.name)
                if field.is_relation:
                    fields[field.name] = None if value is None else list(value.natural_key())
                else:
                    fields[field.name] = _plain(value)
            for field in model._meta.many_to_many:
                if field.remote_field.through._meta.auto_created:
                    related = getattr(obj, field.name).all()
                    fields[field.name] = sorted(_plain(list(r.natural_key())) for r in related)
            rows[json.dumps(_plain(list(obj.natural_key())))] = fields
        out["rows"][model._meta.label_lower] = rows
        out["ids"][model._meta.label_lower] = {
            json.dumps(_plain(list(o.natural_key()))): o.pk for o in model.objects.all()
        }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(out, handle, ensure_ascii=False, indent=1, sort_keys=True)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


ACTIONS = {"migrate": migrate, "populate": populate, "seed-reverse": seed_reverse, "mutate": mutate}


def main(actions: list[str]) -> None:
    configure(os.environ["EDMS_DATABASE_URL"].split())
    from django.core.management import call_command

    for step in actions:
        action, _, index = step.rpartition("@") if "@" in step else (step, "", "0")
        alias = CURRENT["alias"] = _alias(int(index))
        name, _, rest = action.partition(":")
        if name == "dump":
            path, _, natural = rest.partition(":")
            flags = {"natural_foreign": bool(natural), "natural_primary": bool(natural)}
            call_command("dumpdata", "edms", output=path, verbosity=0, database=alias, **flags)
        elif name == "load":
            call_command("loaddata", rest, verbosity=0, database=alias)
        elif name == "state":
            state(rest)
        else:
            ACTIONS[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
