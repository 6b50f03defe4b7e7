"""Container entry point: read connection details from Consul KV, then exec the command.

The tutorial's deploy scripts read Consul KV at deploy time and inject the values
with `docker run -e`. Under Docker Compose there is no script between Consul and
the container, so the container does the same step itself before starting:

    CONSUL_KV_ENV="PGHOST=messenger-db-host,PGPORT=messenger-db-port,..."

Each VAR=key pair is fetched from the agent at CONSUL_HOST:CONSUL_PORT (retrying
while the agent starts) and exported; a missing key stops the container with a
message naming it, instead of starting with an empty value. With CONSUL_KV_ENV
unset this is a plain `exec` of the command.
"""

import os
import sys
import time
import urllib.error
import urllib.request

RETRY_SECONDS = float(os.environ.get("CONSUL_KV_WAIT", "60"))


def fetch(base: str, key: str) -> str | None:
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v1/kv/{key}?raw=true", timeout=5) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            error = f"key {key!r} is not in Consul KV"
        except OSError as exc:
            error = f"Consul at {base} is unreachable ({exc})"
        if time.monotonic() > deadline:
            print(f"consul_env: {error}", file=sys.stderr)
            return None
        time.sleep(1)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("consul_env: no command to run")
    mapping = os.environ.get("CONSUL_KV_ENV", "").strip()
    if mapping:
        base = f"http://{os.environ.get('CONSUL_HOST', 'consul-client')}:{os.environ.get('CONSUL_PORT', '8500')}"
        missing = []
        for pair in filter(None, (item.strip() for item in mapping.split(","))):
            variable, _, key = pair.partition("=")
            value = fetch(base, key)
            if value is None:
                missing.append(key)
            else:
                os.environ[variable] = value
        if missing:
            sys.exit(f"consul_env: cannot start without Consul KV key(s): {', '.join(missing)}")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
