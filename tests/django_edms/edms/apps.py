from django.apps import AppConfig


class EdmsConfig(AppConfig):
    name = "tests.django_edms.edms"
    label = "edms"
    default_auto_field = "django.db.models.AutoField"
