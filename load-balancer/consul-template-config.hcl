# consul-template configuration of the load balancer image (see Dockerfile).
# The agent's address comes from CONSUL_URL, passed as -consul-addr by
# docker-entrypoint.sh, as in the seed's deploy script.

consul {
  retry {
    enabled = true
    # 0 retries forever. With the seed's 12 attempts, consul-template gave up
    # (and stopped following the catalog) after a few minutes without Consul;
    # meanwhile NGINX keeps the last list it rendered.
    attempts    = 0
    backoff     = "250ms"
    max_backoff = "10s"
  }
}

# Quiescence: render only once Consul has been quiet for 250ms (at most 1s
# after the first change), so a burst of instances coming or going becomes one
# reload. upstream_watcher.py uses the same window.
wait {
  min = "250ms"
  max = "1s"
}

template {
  source      = "/etc/consul-template/nginx.ctmpl"
  destination = "/etc/nginx/messenger/messenger-upstream.conf.rendered"
  perms       = 0644

  # Installs the render only if `nginx -t` accepts the whole configuration,
  # then reloads NGINX (or starts it if it is not running). --exit-zero:
  # consul-template exits when its command fails, and a rejected render must
  # not end the watch; the script reports the rejection on stderr instead.
  command         = "/usr/local/lib/messenger-lb/nginx-apply.sh --exit-zero"
  command_timeout = "60s"
}
