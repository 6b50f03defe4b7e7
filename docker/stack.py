"""Print the swarm stack: docker/compose.yaml with docker/compose.swarm.yaml merged over it.

    python docker/stack.py | docker stack deploy --compose-file - messenger

`docker stack deploy` reads a subset of what Compose reads: it refuses the long
form of `depends_on` (the conditions compose.yaml orders its jobs with) and
ignores `build` and `restart`. So the stack is not a second file kept by hand:
this merges the override over the one declaration, the way Compose merges
files (mappings key by key, anything else replaced), where a key the override
sets to null is removed. Variables stay as they are: `docker stack deploy`
fills them from its environment (infrastructure/swarm.sh exports them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

DOCKER_DIR = Path(__file__).resolve().parent
BASE = DOCKER_DIR / "compose.yaml"
OVERRIDE = DOCKER_DIR / "compose.swarm.yaml"
# The Compose file format version whose schema `docker stack deploy` checks this against.
STACK_FORMAT = "3.9"


def merge(base: Any, override: Any) -> Any:
    """The override's value, merged key by key into the base's where both are mappings."""
    if not isinstance(override, dict):
        return override
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge(merged.get(key), value)
    return merged


def absolute_binds(service: dict[str, Any]) -> dict[str, Any]:
    """Bind mounts' relative host paths made absolute, as Compose reads them: from this folder.

    A swarm mounts a path of the node's own filesystem, which every host of this
    machine shares; `docker stack deploy` would read a relative one from its
    working directory instead.
    """
    volumes = [
        str((DOCKER_DIR / volume.split(":", 1)[0]).resolve()) + ":" + volume.split(":", 1)[1]
        if isinstance(volume, str) and volume.startswith(".")
        else volume
        for volume in service.get("volumes", [])
    ]
    return {**service, "volumes": volumes} if volumes else service


def stack(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = merge(base, override)
    merged["services"] = {name: absolute_binds(service) for name, service in merged["services"].items()}
    # Extension fields (x-...) are anchors for the files themselves.
    result = {key: value for key, value in merged.items() if not key.startswith("x-")}
    result["version"] = STACK_FORMAT
    return result


def main() -> None:
    base = yaml.safe_load(BASE.read_text())
    override = yaml.safe_load(OVERRIDE.read_text())
    yaml.safe_dump(stack(base, override), sys.stdout, sort_keys=False, width=1000)


if __name__ == "__main__":
    main()
