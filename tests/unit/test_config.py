"""Settings from defaults, TOML, env and flags; validation at load."""

from __future__ import annotations

import pytest

from lookalike_server.config import Config
from lookalike_server.config_loading import config_reference, describe, load_config
from lookalike_server.errors import ConfigError


def test_defaults_are_valid():
    c = load_config([], {})
    # Batching is tuned at warm-up by default: the candidates go up to 32.
    assert c.port == 50051 and c.batching.auto_batch_size and c.batching.auto_delay
    assert c.batching.resolved_buckets() == (1, 2, 4, 8, 16, 32)
    assert c.milvus_uri.endswith("milvus.db")


def test_precedence_toml_then_env_then_flag(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('port = 1111\n[milvus]\nuri = "http://a:19530"\n[batching]\nmax_batch_size = 4\n')
    env = {"LOOKALIKE_CONFIG": str(f), "LOOKALIKE_PORT": "2222", "LOOKALIKE_BATCHING_MAX_DELAY_MS": "7.5"}
    c = load_config(["--port", "3333"], env)
    assert c.port == 3333
    assert c.milvus.uri == "http://a:19530"
    assert c.batching.max_batch_size == 4
    assert c.batching.max_delay_ms == 7.5
    assert load_config([], env).port == 2222


def test_lists_and_booleans_from_strings():
    c = load_config(["--models-only", "a,b", "--stores", "false"], {"LOOKALIKE_BATCHING_BUCKETS": "1, 4,16"})
    assert c.models.only == ("a", "b")
    assert c.stores is False
    assert c.batching.buckets == (1, 4, 16)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--port", "70000"], "port"),
        (["--batching-max-batch-size", "-1"], "batching.max_batch_size"),
        (["--batching-max-delay-ms", "-2"], "batching.max_delay_ms"),
        (["--batching-auto-epsilon", "1"], "batching.auto_epsilon"),
        (["--models-batch-workers", "-1"], "models.batch_workers"),
        (["--models-wide-session", "sometimes"], "models.wide_session"),
        (["--models-wide-intra-op-threads", "-1"], "models.wide_intra_op_threads"),
        (["--milvus-index-type", "ANNOY"], "milvus.index_type"),
        (["--redis-url", "http://x"], "redis.url"),
        (["--models-providers", "FooExecutionProvider"], "unknown provider"),
        (["--port", "abc"], "port"),
        (["--stores", "maybe"], "not a boolean"),
        (["--index-dedupe", "name"], "index.dedupe"),
    ],
)
def test_bad_settings_name_the_setting(argv, match):
    with pytest.raises(ConfigError, match=match):
        load_config(argv, {})


def test_unknown_toml_key_is_an_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[milvus]\nurl = 'oops'\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(["--config", str(f)], {})


def test_secrets_are_masked_in_describe():
    c = load_config(["--milvus-token", "root:Milvus"], {})
    assert describe(c)["milvus"]["token"] == "***"


def test_reference_lists_every_setting():
    ref = config_reference()
    assert "`--milvus-uri`" in ref and "`LOOKALIKE_BATCHING_MAX_DELAY_MS`" in ref
    assert ref.count("\n") > 30


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().port = 1  # type: ignore[misc]


def test_configuration_doc_is_current():
    """docs/configuration.md holds exactly the table the dataclasses give."""
    import importlib.util

    from lookalike_server.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("gen_config_docs", REPO_ROOT / "scripts" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.DOC.read_text()
    assert gen.render(text) == text, "run `python scripts/gen_config_docs.py` and commit docs/configuration.md"
