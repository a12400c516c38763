import pytest

from mtproxy.config import ConfigError, load_config_text

BASE = "backends:\n  - {name: a, runtime: vllm, url: 'http://127.0.0.1:8000'}\n"


def test_defaults():
    cfg = load_config_text(BASE)
    assert cfg.server.port == 8088 and cfg.server.api_keys == []
    assert cfg.routing.mtp == "prefer"
    assert cfg.timeouts.first_token != 300 and cfg.timeouts.idle != 300
    assert cfg.server.receive_timeout == 30 and cfg.server.max_connections == 1024


def test_env_interpolation_with_defaults_and_paths():
    text = BASE + "server: {api_keys: ['${K1}', '${K2:-fallback}']}\n"
    cfg = load_config_text(text, env={"K1": "one"})
    assert [k.get_secret_value() for k in cfg.server.api_keys] == ["one", "fallback"]
    with pytest.raises(ConfigError, match=r"server\.api_keys\[0\]: environment variable K1 is not set"):
        load_config_text(text, env={})


@pytest.mark.parametrize("extra, message", [
    ("models: {m: {aliases: [x]}, n: {aliases: [x]}}\n", "models.n.aliases: 'x' is already an alias of 'm'"),
    ("models: {m: {aliases: [n]}, n: {}}\n", "models.m.aliases: 'n' is also a model name"),
    ("routing: {mtp: sometimes}\n", "routing.mtp: Input should be 'prefer', 'require' or 'ignore'"),
    ("routing: {balance: random}\n", "routing.balance: Input should be 'least_outstanding' or 'fastest'"),
    ("routing: {max_age_seconds: 0}\n", "routing.max_age_seconds: Input should be greater than 0"),
    ("timeouts: {idle: 0}\n", "timeouts.idle: Input should be greater than 0"),
    ("server: {receive_timeout: 0}\n", "server.receive_timeout: Input should be greater than 0"),
    ("server: {max_connections: 0}\n", "server.max_connections: Input should be greater than 0"),
    ("bogus: 1\n", "bogus: unknown field"),
    ("models: {m: {aliases: [on]}}\n", "models.m.aliases[0]: Input should be a valid string (YAML reads"),
])
def test_errors_name_the_field(extra, message):
    with pytest.raises(ConfigError) as exc:
        load_config_text(BASE + extra)
    assert message in str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("", "(top level)"),
    ("backends: [", "(yaml)"),
    ("backends: []", "backends: List should have at least 1 item"),
])
def test_malformed_documents(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config_text(text)
