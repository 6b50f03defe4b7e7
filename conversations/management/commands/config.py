"""Print the configuration schema with the values in force."""

from django.conf import settings
from django.core.management.base import BaseCommand

from messenger.config import SCHEMA


class Command(BaseCommand):
    help = "Print every configuration variable with its value in force, its source and its doc; secrets are masked."

    def add_arguments(self, parser):
        parser.add_argument("--markdown", action="store_true", help="Print the schema as a Markdown table (for the README).")

    def handle(self, *args, **options):
        config = settings.CONFIG
        if options["markdown"]:
            self.stdout.write("| variable | type | default | description |")
            self.stdout.write("|---|---|---|---|")
            for setting in SCHEMA:
                default = setting.default if setting.default is not None else ""
                per_env = ", ".join(f"{env}: {value}" for env, value in setting.env_defaults.items())
                if per_env:
                    default = f"{default} ({per_env})"
                self.stdout.write(f"| `{setting.name}` | {setting.type} | {default} | {setting.doc} |")
            return
        self.stdout.write(f"environment: {config.environment}")
        width = max(len(s.name) for s in SCHEMA)
        for setting in SCHEMA:
            name = setting.name
            self.stdout.write(
                f"{name:<{width}}  {config.display(name):<24}  [{config.source(name)}]  {setting.doc}"
            )
