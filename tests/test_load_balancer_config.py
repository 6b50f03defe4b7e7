"""The load balancer's files, checked without a running topology.

Both runtimes render the same upstream list (consul-template from nginx.ctmpl
in the image, upstream_watcher.py locally) and include the same server block;
these tests keep the two paths identical and check every rendered shape with
the real `nginx -t`. nginx-apply.sh, the command both paths apply a render
with, runs here against a real NGINX. The Dockerfile itself goes through
hadolint in tests/test_docker_files.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hcl
import pytest

from core import config as config_schema

# The recording stand-in for a Docker engine, shared with the other deploy scripts' tests.
from tests.consul.test_deploy_scripts import fake_docker  # noqa: F401 (a fixture)
from tests.support.load_balancer import INFRA, LB_DIR, expand_ctmpl, watcher_module
from tests.support.processes import free_port, http_get

watcher = watcher_module()

INSTANCE_SETS = {
    "none": [],
    "one": [("10.0.0.7", 4000)],
    "three": [("10.0.0.5", 4000), ("10.0.0.6", 4000), ("10.0.0.7", 4001)],
}


def nginx_test(conf_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nginx", "-t", "-q", "-e", "stderr", "-p", f"{conf_dir}/", "-c", str(conf_dir / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("instances", INSTANCE_SETS.values(), ids=INSTANCE_SETS.keys())
def test_consul_template_and_the_watcher_render_the_same_upstream_list(instances):
    """nginx.ctmpl, expanded as consul-template would, gives the watcher's text byte for byte."""
    services = {"messenger": [{"Address": address, "Port": port} for address, port in instances]}
    from_template = expand_ctmpl((LB_DIR / "nginx.ctmpl").read_text(), services)
    assert from_template == watcher.render_upstream("messenger", instances)


@pytest.mark.parametrize("instances", INSTANCE_SETS.values(), ids=INSTANCE_SETS.keys())
def test_nginx_accepts_every_rendered_shape_with_the_shared_server_block(tmp_path, instances):
    nginx = watcher.Nginx(tmp_path, "nginx")
    nginx.prepare(f"127.0.0.1:{free_port()}")
    (tmp_path / "messenger-upstream.conf").write_text(watcher.render_upstream("messenger", instances))
    result = nginx_test(tmp_path)
    assert result.returncode == 0, result.stderr


def test_no_instance_renders_a_placeholder_never_an_empty_upstream_block():
    text = watcher.render_upstream("messenger", [])
    block = re.search(r"upstream messenger_service \{(.*?)\n\}", text, re.DOTALL).group(1)
    assert re.findall(r"^\s*server .*;$", block, re.MULTILINE) == ["    server 127.0.0.1:9 down;"]
    assert 'map "" $messenger_instances {\n    default 0;\n}' in text


def test_the_render_is_sorted_so_a_reordered_answer_from_consul_changes_nothing():
    instances = INSTANCE_SETS["three"]
    assert watcher.render_upstream("messenger", instances[::-1]) == watcher.render_upstream("messenger", instances)


def test_the_image_starts_with_the_no_instance_list():
    """The list the Dockerfile copies in is what both renderers give for an empty catalog."""
    assert (LB_DIR / "messenger-upstream.conf").read_text() == watcher.render_upstream("messenger", [])
    assert (LB_DIR / "messenger-listen.conf").read_text().splitlines()[-1] == "listen 8085;"


def dockerfile_copies() -> dict[str, str]:
    """Each file the load balancer's Dockerfile copies, and the path it lands at."""
    copies = {}
    for line in (LB_DIR / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, target = [word for word in line.split()[1:] if not word.startswith("--")]
            for source in sources:
                copies[source] = target + source if target.endswith("/") else target
    return copies


def test_consul_template_retries_forever_and_renders_where_nginx_apply_reads():
    config = hcl.loads((LB_DIR / "consul-template-config.hcl").read_text())
    copies = dockerfile_copies()
    assert config["consul"]["retry"]["enabled"] is True
    assert config["consul"]["retry"]["attempts"] == 0  # 0: forever
    # The address comes from CONSUL_URL at run time (docker-entrypoint.sh), never from this file.
    assert "address" not in config["consul"]
    assert '-consul-addr="$CONSUL_URL"' in (LB_DIR / "docker-entrypoint.sh").read_text()
    # The same quiet window as the local runtime's watcher.
    defaults = watcher.parse_args(["--state-dir", "unused"])
    assert config_schema.parse_duration(config["wait"]["min"]) == defaults.wait_min
    assert config_schema.parse_duration(config["wait"]["max"]) == defaults.wait_max

    template = config["template"]
    assert template["source"] == copies["nginx.ctmpl"]
    conf_dir = Path(copies["messenger-upstream.conf"]).parent
    assert Path(template["destination"]) == conf_dir / "messenger-upstream.conf.rendered"
    assert template["command"] == f"{copies['nginx-apply.sh']} --exit-zero"
    assert copies["consul-template-config.hcl"] in (LB_DIR / "docker-entrypoint.sh").read_text()
    assert f"NGINX_CONF_DIR:-{conf_dir}" in (LB_DIR / "nginx-apply.sh").read_text()


def test_nginx_body_cap_is_never_below_json_body_limit():
    """The service answers an oversized body with its own JSON 413; NGINX must not refuse first."""
    server = (LB_DIR / "messenger-server.conf").read_text()
    size, unit = re.search(r"client_max_body_size (\d+)([kmg]?);", server).groups()
    cap = int(size) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
    # The deploy scripts pass no limit of their own: the schema's default is what every instance runs with.
    assert "JSON_BODY_LIMIT=" not in (INFRA / "messenger-deploy.sh").read_text()
    assert cap >= config_schema.parse_bytes(config_schema.SCHEMA_BY_NAME["JSON_BODY_LIMIT"].default)
    assert f"accepts ({size}{unit}b)" in server  # NGINX's own 413 names its cap


def test_image_scripts_pass_shellcheck():
    """The deploy and stop scripts are checked with the rest of infrastructure/ (tests/consul)."""
    shellcheck = Path(sys.executable).with_name("shellcheck")
    result = subprocess.run(
        [str(shellcheck), "nginx-apply.sh", "docker-entrypoint.sh"],
        cwd=LB_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_runtime_runs_the_seeds_container(fake_docker, tmp_path):
    """As the seed's deploy script: the caller's Consul location, port 8085, the platform's network."""
    env = {
        **fake_docker.env,
        "HOME": str(tmp_path),
        "MESSENGER_RUNTIME": "",
        "MESSENGER_STATE_DIR": str(tmp_path),
        "CONSUL_HOST": "consul-client",
        "CONSUL_PORT": "8500",
    }
    result = subprocess.run(
        [str(INFRA / "messenger-load-balancer-deploy.sh")], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert [call["argv"] for call in fake_docker("run")] == [
        [
            "run",
            "-d",
            "--restart",
            "unless-stopped",
            "--name",
            "messenger-lb",
            "--network",
            "mm_2023",
            "-e",
            "CONSUL_URL=consul-client:8500",
            "-p",
            "8085:8085",
            "messenger-lb",
        ]
    ]
    assert "messenger-lb: container started" in result.stderr
    assert "messenger-lb: answering on port 8085" in result.stderr


# --- nginx-apply.sh against a real NGINX --------------------------------------------------


class _Backend(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server API)
        body = b'{"backend":"up"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def backend():
    """A stand-in instance: the service itself is not what these tests are about."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def nginx(tmp_path):
    """Our own NGINX under tmp_path, stopped after the test."""
    instance = watcher.Nginx(tmp_path, "nginx")
    instance.port = free_port()
    instance.prepare(f"127.0.0.1:{instance.port}")
    yield instance
    instance.quit(timeout=10)


def run_apply(conf_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NGINX_CONF_DIR": str(conf_dir), "NGINX_PREFIX": str(conf_dir)}
    return subprocess.run(
        ["sh", str(LB_DIR / "nginx-apply.sh"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_nginx_apply_starts_nginx_then_reloads_it(nginx, backend):
    assert nginx.apply(watcher.render_upstream("messenger", [])) == "started"
    status, body, _ = http_get(f"http://127.0.0.1:{nginx.port}/health")
    assert (status, body) == (503, b'{"error":"No healthy messenger instance is available; try again shortly."}')
    master = nginx.master_pid()

    assert nginx.apply(watcher.render_upstream("messenger", [("127.0.0.1", backend)])) == "reloaded"
    # nginx-apply.sh returns once the old workers stopped accepting: from the
    # very next connection on, the new list serves.
    for _ in range(20):
        status, body, headers = http_get(f"http://127.0.0.1:{nginx.port}/health")
        assert (status, body, headers.get("Upstream-Host")) == (200, b'{"backend":"up"}', f"127.0.0.1:{backend}")
    assert nginx.master_pid() == master


def test_nginx_apply_never_replaces_the_last_good_list_with_one_nginx_rejects(nginx, backend):
    good = watcher.render_upstream("messenger", [("127.0.0.1", backend)])
    assert nginx.apply(good) == "started"
    master = nginx.master_pid()
    bad = good.replace(f"127.0.0.1:{backend};", "127.0.0.1:99999;")  # a port NGINX refuses
    (nginx.state_dir / "messenger-upstream.conf.rendered").write_text(bad)

    result = run_apply(nginx.state_dir)

    assert result.returncode == 1
    assert "NGINX rejected the rendered upstream list; kept the last good one" in result.stderr
    assert (nginx.state_dir / "messenger-upstream.conf").read_text() == good
    assert not (nginx.state_dir / "messenger-upstream.conf.last-good").exists()
    assert nginx.master_pid() == master
    assert http_get(f"http://127.0.0.1:{nginx.port}/health")[0] == 200
    assert nginx_test(nginx.state_dir).returncode == 0


def test_nginx_apply_exit_zero_reports_a_rejection_without_failing(nginx):
    """consul-template stops watching when its command fails: the image's command must not."""
    assert nginx.apply(watcher.render_upstream("messenger", [])) == "started"
    (nginx.state_dir / "messenger-upstream.conf.rendered").write_text("upstream messenger_service { }\n")

    result = run_apply(nginx.state_dir, "--exit-zero")

    assert result.returncode == 0
    assert "NGINX rejected the rendered upstream list" in result.stderr
    assert "failed with status 1; NGINX keeps its current configuration" in result.stderr
    assert (nginx.state_dir / "messenger-upstream.conf").read_text() == watcher.render_upstream("messenger", [])


def test_the_live_upstream_reaches_each_instance_at_the_live_port_its_entry_advertises():
    """Both renderers: `live_port` from the Consul entry's meta, the instance's own port without one."""
    entries = [
        {"Address": "10.0.0.5", "Port": 4000, "ServiceMeta": {"live_port": "4100"}},
        {"Address": "10.0.0.6", "Port": 4000, "ServiceMeta": {}},
    ]
    from_template = expand_ctmpl((LB_DIR / "nginx.ctmpl").read_text(), {"messenger": entries})
    rendered = watcher.render_upstream("messenger", [("10.0.0.5", 4000, 4100), ("10.0.0.6", 4000)])
    assert from_template == rendered
    live = re.search(r"upstream messenger_live \{(.*?)\n\}", rendered, re.DOTALL).group(1)
    assert re.findall(r"server (\S+);", live) == ["10.0.0.5:4100", "10.0.0.6:4000"]


def test_nginx_waits_on_an_instance_longer_than_the_longest_wait_and_an_idle_streams_heartbeat():
    from core.config import SCHEMA_BY_NAME, parse_duration

    server = (LB_DIR / "messenger-server.conf").read_text()
    read_timeout = parse_duration(re.search(r"proxy_read_timeout (\S+);", server).group(1))
    assert SCHEMA_BY_NAME["LIVE_WAIT_MAX"].default < read_timeout
    assert parse_duration(SCHEMA_BY_NAME["LIVE_HEARTBEAT"].default) < read_timeout
