#!/bin/sh
# Entry point of the load balancer image (run by dumb-init).
#
# NGINX is the container's main process, so `docker stop` (STOPSIGNAL SIGQUIT,
# which dumb-init forwards) lets it finish in-flight requests before the
# container exits. It starts with the list the image ships (no instance yet:
# a 503 JSON error) so the port answers at once; consul-template, started
# beside it as soon as NGINX is up, keeps the list in step with Consul.
set -eu

CONF="/etc/nginx/messenger/nginx.conf"
PREFIX="/var/cache/messenger-lb"
CONSUL_TEMPLATE_CONFIG="/etc/consul-template/consul-template-config.hcl"

: "${CONSUL_URL:?CONSUL_URL must be the host:port of a Consul agent}"

# A pid file left by a killed NGINX (docker restart keeps the filesystem)
# would make the first render signal a process that is gone.
rm -f "$PREFIX/nginx.pid"

(
    # The first render must reload this NGINX, not start a second one.
    while [ ! -s "$PREFIX/nginx.pid" ]; do
        sleep 0.1
    done
    exec consul-template -config="$CONSUL_TEMPLATE_CONFIG" -consul-addr="$CONSUL_URL"
) &

exec nginx -g 'daemon off;' -e stderr -p "$PREFIX/" -c "$CONF"
