"""Print the configuration schema with the values in force."""

from django.conf import settings
from django.core.management.base import BaseCommand

from core.config import SCHEMA, markdown_table


class Command(BaseCommand):
    help = "Print every configuration variable with its value in force, its source and its doc; secrets are masked."

    def add_arguments(self, parser):
        parser.add_argument(
            "--markdown", action="store_true", help="Print the schema as a Markdown table (docs/configuration.md's)."
        )

    def handle(self, *args, **options):
        config = settings.CONFIG
        if options["markdown"]:
            self.stdout.write(markdown_table(), ending="")
            return
        self.stdout.write(f"environment: {config.environment}")
        width = max(len(s.name) for s in SCHEMA)
        for setting in SCHEMA:
            name = setting.name
            self.stdout.write(f"{name:<{width}}  {config.display(name):<24}  [{config.source(name)}]  {setting.doc}")
