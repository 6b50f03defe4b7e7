#!/bin/sh
# Entry point of the load balancer image (run by dumb-init, PID 1).
#
# NGINX is the container's main process, so `docker stop` (STOPSIGNAL SIGQUIT,
# which dumb-init forwards) lets it finish in-flight requests before the
# container exits. It starts with the list the image ships (no instance yet:
# a 503 JSON error), so the port answers at once.
#
# The renderer (consul-template, or upstream_watcher.py when the image was
# built with LB_RENDERER=watcher) keeps the list in step with Consul. It runs
# beside NGINX, never under it: nginx-apply.sh takes the master's children for
# its workers and waits for them at each reload, so a renderer that is a child
# of the master (started by this shell before it becomes NGINX) would stall
# every reload. A double fork leaves it to PID 1. Should the renderer exit,
# NGINX is asked to quit gracefully: the container ends, and the engine's
# restart policy brings back both.
set -eu

CONF_DIR="/etc/nginx/messenger"
PREFIX="/var/cache/messenger-lb"
CONSUL_TEMPLATE_CONFIG="/etc/consul-template/consul-template-config.hcl"
WATCHER="/usr/local/lib/messenger-lb/upstream_watcher.py"
# The port NGINX listens on inside the container (messenger-listen.conf).
LISTEN_PORT=8085

: "${CONSUL_URL:?CONSUL_URL must be the host:port of a Consul agent}"
: "${LB_RENDERER:?LB_RENDERER must be consul-template or watcher}"

# A pid file left by a killed NGINX (docker restart keeps the filesystem)
# would make the first render signal a process that is gone.
rm -f "$PREFIX/nginx.pid"

render() {
    case "$LB_RENDERER" in
        consul-template)
            consul-template -config="$CONSUL_TEMPLATE_CONFIG" -consul-addr="$CONSUL_URL" ;;
        watcher)
            # NGINX is this script's to run: the watcher only renders and reloads.
            python3 "$WATCHER" --state-dir "$CONF_DIR" --prefix "$PREFIX" --consul "$CONSUL_URL" \
                --port "$LISTEN_PORT" --keep-nginx ;;
        *)
            echo "messenger-lb: LB_RENDERER must be consul-template or watcher, not '$LB_RENDERER'" >&2
            return 2 ;;
    esac
}

(
    (
        # The first render must reload this NGINX, not start a second one.
        while [ ! -s "$PREFIX/nginx.pid" ]; do
            sleep 0.1
        done
        status=0
        render || status=$?
        echo "messenger-lb: the renderer ($LB_RENDERER) exited with status $status; stopping NGINX" >&2
        nginx -e stderr -p "$PREFIX/" -c "$CONF_DIR/nginx.conf" -s quit
    ) &
)

exec nginx -g 'daemon off;' -e stderr -p "$PREFIX/" -c "$CONF_DIR/nginx.conf"
