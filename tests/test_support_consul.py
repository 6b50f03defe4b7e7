"""The Consul agent the system tests start is real and isolated."""


def test_consul_agent_starts_and_stores_keys(consul_agent):
    consul_agent.kv_put("messenger-db-port", "5432")
    assert consul_agent.kv_get("messenger-db-port") == "5432"
    assert consul_agent.kv_get("missing-key") is None
