"""Regenerate the configuration table (docs/configuration.md) and .env.example from the schema.

Run with `make docs` after adding or changing a setting in core/config.py;
a test fails while either file is out of step with the schema.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.config import env_example, markdown_table  # noqa: E402

TABLE_RE = re.compile(r"(<!-- config-table:start -->\n).*?(<!-- config-table:end -->)", re.S)

if __name__ == "__main__":
    page = ROOT / "docs" / "configuration.md"
    page.write_text(TABLE_RE.sub(lambda m: m.group(1) + markdown_table() + m.group(2), page.read_text()))
    (ROOT / ".env.example").write_text(env_example())
    print("docs/configuration.md table and .env.example regenerated from core/config.py")
