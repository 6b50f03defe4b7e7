#!/bin/sh
# Put a freshly rendered upstream list in place only if NGINX accepts it, then
# reload NGINX, or start it when it is not running.
#
# consul-template runs this as its template command in the Docker image;
# upstream_watcher.py runs it in the local runtime, so both apply a render the
# same way. A render NGINX rejects never replaces the last good list: the
# running NGINX keeps its configuration and the file on disk stays loadable.
#
# Exit status: 0 applied (reloaded or started), 1 rejected (last good kept),
# 2 nothing rendered, 3 NGINX could not be reloaded or started.
# With --exit-zero every failure is reported on stderr and the status is 0:
# consul-template stops watching Consul when its template command fails.
set -eu

# Where the configuration lives (nginx.conf and what it includes) and the
# prefix NGINX writes under (pid, logs, temp). The defaults are the image's.
CONF_DIR="${NGINX_CONF_DIR:-/etc/nginx/messenger}"
PREFIX="${NGINX_PREFIX:-/var/cache/messenger-lb}"
NGINX="${NGINX_BIN:-nginx}"

rendered="$CONF_DIR/messenger-upstream.conf.rendered"
live="$CONF_DIR/messenger-upstream.conf"
last_good="$live.last-good"

if [ "${1:-}" = "--exit-zero" ]; then
    # Run the rest as a child and report, but never fail, whatever its outcome.
    sh "$0" || echo "nginx-apply: failed with status $?; NGINX keeps its current configuration" >&2
    exit 0
fi

nginx_run() {
    # -e: errors before the configuration is read go to stderr too, never to a
    # compiled-in path this user may not own.
    "$NGINX" -e stderr -p "$PREFIX/" -c "$CONF_DIR/nginx.conf" "$@"
}

nginx_running() {
    # The pid file outlives a killed NGINX, and its pid may be reused: check
    # that the process behind it is still an NGINX master, and not a killed
    # one no one has reaped yet (a zombie).
    pid=$(cat "$PREFIX/nginx.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ -r "/proc/$pid/stat" ] || return 0
    [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ] && [ "$(cat "/proc/$pid/comm")" = nginx ]
}

if [ ! -f "$rendered" ]; then
    echo "nginx-apply: nothing rendered at $rendered" >&2
    exit 2
fi

# Swap the new list in with a rename (NGINX never reads a half-written file),
# keeping the current one to restore if the whole configuration fails its test.
if [ -f "$live" ]; then
    cp -p "$live" "$last_good"
fi
cp "$rendered" "$live.tmp"
mv -f "$live.tmp" "$live"

if ! nginx_run -t -q; then
    if [ -f "$last_good" ]; then
        mv -f "$last_good" "$live"
    else
        rm -f "$live"
    fi
    echo "nginx-apply: NGINX rejected the rendered upstream list; kept the last good one" >&2
    exit 1
fi
rm -f "$last_good"

workers_of() {  # master pid: its worker processes' pids
    grep -l "^PPid:[[:space:]]*$1\$" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3 || true
}

# A reload is only a signal: the master starts new workers, then tells the old
# ones to stop accepting and finish what they have. Until they do, a new
# connection may still meet the old list. Wait (at most 5s) until every old
# worker is gone or shutting down, so "reloaded" means the new list serves
# every new connection.
wait_for_old_workers() {  # old worker pids...
    for _ in $(seq 1 50); do
        busy=0
        for worker in "$@"; do
            if [ -r "/proc/$worker/cmdline" ] && ! grep -q "shutting down" "/proc/$worker/cmdline" 2>/dev/null; then
                busy=1
            fi
        done
        [ "$busy" -eq 0 ] && return 0
        sleep 0.1
    done
    echo "nginx-apply: old NGINX workers still accepting after 5s" >&2
}

if nginx_running; then
    # Graceful: new workers take new connections, old ones finish what they
    # have in flight, then exit.
    old_workers=$(workers_of "$pid")
    nginx_run -s reload || exit 3
    # shellcheck disable=SC2086 # one pid per word
    wait_for_old_workers $old_workers
    echo "nginx-apply: reloaded NGINX (master pid $pid)"
else
    nginx_run || exit 3
    echo "nginx-apply: started NGINX"
fi
