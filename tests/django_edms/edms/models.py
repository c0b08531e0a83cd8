"""The twelve EDMS models (shared EDMS.md) as a Django application would write them.

Tables are named as nkdaemon's EDMS example names them (``db_table``); every model has a
natural key, ``natural_key()`` giving the parts of the table's natural key in order, a
reference spliced in as the referenced model's own natural key (Django's convention), and
a manager whose ``get_by_natural_key`` reads that back. ``Document.watchers`` is a plain
many-to-many field whose through table Django creates (``document_watchers``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


def _key_width(model: Any) -> int:
    width = 0
    for name in model.NATURAL_KEY:
        field = model._meta.get_field(name)
        width += _key_width(field.related_model) if field.is_relation else 1
    return width


class NaturalManager(models.Manager):  # type: ignore[type-arg]
    def get_by_natural_key(self, *values: Any) -> Any:
        rest = list(values)
        lookup: dict[str, Any] = {}
        for name in self.model.NATURAL_KEY:
            field = self.model._meta.get_field(name)
            if field.is_relation:
                width = _key_width(field.related_model)
                part, rest = rest[:width], rest[width:]
                lookup[name] = field.related_model._default_manager.get_by_natural_key(*part)
            else:
                lookup[name] = rest.pop(0)
        return self.get(**lookup)


class Natural(models.Model):
    NATURAL_KEY: tuple[str, ...] = ()
    objects = NaturalManager()

    class Meta:
        abstract = True

    def natural_key(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for name in self.NATURAL_KEY:
            field = self._meta.get_field(name)
            value = getattr(self, name)
            out.extend(value.natural_key() if field.is_relation else [value])
        return tuple(out)


_POSTGRES = "postgresql" in settings.DATABASES["default"]["ENGINE"]


def _tags() -> Any:
    if _POSTGRES:
        from django.contrib.postgres.fields import ArrayField

        return ArrayField(models.TextField(), null=True)
    return models.JSONField(null=True)


class Role(Natural):
    NATURAL_KEY = ("name",)
    name = models.CharField(max_length=64, unique=True)
    description = models.TextField(null=True)

    class Meta:
        db_table = "roles"


class User(Natural):
    NATURAL_KEY = ("username",)
    username = models.CharField(max_length=150, unique=True)
    email = models.CharField(max_length=254, null=True)
    full_name = models.TextField(null=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField()
    roles = models.ManyToManyField(Role, through="UserRole")

    class Meta:
        db_table = "users"


class UserRole(Natural):
    NATURAL_KEY = ("user", "role")
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    role = models.ForeignKey(Role, on_delete=models.CASCADE)
    granted_at = models.DateTimeField()

    class Meta:
        db_table = "user_roles"
        unique_together = (("user", "role"),)


class DocumentType(Natural):
    NATURAL_KEY = ("code",)
    code = models.CharField(max_length=32, unique=True)
    label = models.TextField()

    class Meta:
        db_table = "document_types"


class DocumentSource(Natural):
    NATURAL_KEY = ("name",)
    name = models.CharField(max_length=100, unique=True)
    url = models.TextField(null=True)

    class Meta:
        db_table = "document_sources"


class DocumentWorkflow(Natural):
    NATURAL_KEY = ("name",)
    name = models.CharField(max_length=100, unique=True)
    initial_state = models.ForeignKey(
        "DocumentState", null=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "document_workflows"


class DocumentState(Natural):
    NATURAL_KEY = ("workflow", "code")
    workflow = models.ForeignKey(DocumentWorkflow, on_delete=models.CASCADE)
    code = models.CharField(max_length=32)
    label = models.TextField()

    class Meta:
        db_table = "document_states"
        unique_together = (("workflow", "code"),)


class Document(Natural):
    NATURAL_KEY = ("document_number",)
    document_number = models.CharField(max_length=40, unique=True)
    title = models.TextField()
    type = models.ForeignKey(DocumentType, on_delete=models.PROTECT)
    source = models.ForeignKey(DocumentSource, null=True, on_delete=models.PROTECT)
    state = models.ForeignKey(DocumentState, null=True, on_delete=models.PROTECT)
    author = models.ForeignKey(User, on_delete=models.PROTECT)
    parent = models.ForeignKey("self", null=True, on_delete=models.SET_NULL)
    fee = models.DecimalField(max_digits=14, decimal_places=4, null=True)
    tags = _tags()
    created_at = models.DateTimeField()
    watchers = models.ManyToManyField(User, related_name="watched", db_table="document_watchers")

    class Meta:
        db_table = "documents"


class DocumentVersion(Natural):
    NATURAL_KEY = ("document", "version_number")
    document = models.ForeignKey(Document, on_delete=models.CASCADE)
    version_number = models.IntegerField()
    created_by = models.ForeignKey(User, on_delete=models.PROTECT, db_column="created_by")
    content = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "document_versions"
        unique_together = (("document", "version_number"),)


class DocumentDependency(Natural):
    NATURAL_KEY = ("document", "depends_on", "kind")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="+")
    depends_on = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=32)
    note = models.TextField(null=True)

    class Meta:
        db_table = "document_dependencies"
        unique_together = (("document", "depends_on", "kind"),)


class DocumentComment(Natural):
    NATURAL_KEY = ("uuid",)
    uuid = models.UUIDField(unique=True)
    document = models.ForeignKey(Document, on_delete=models.CASCADE)
    author = models.ForeignKey(User, on_delete=models.PROTECT)
    body = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "document_comments"


class PlaceholderDefinition(Natural):
    NATURAL_KEY = ("name",)
    name = models.CharField(max_length=100, unique=True)
    default_value = models.JSONField(null=True)

    class Meta:
        db_table = "placeholder_definitions"
