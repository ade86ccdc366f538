"""The config schema: what validates, and errors that name the field and the fix."""

from __future__ import annotations

import os

import pytest
import yaml

from ray_migrate.cli import main
from ray_migrate.config import load_config, parse_config
from ray_migrate.errors import ConfigError


def base(**over):
    raw = {
        "migration_id": "docs-to-lance",
        "source": {"kind": "qdrant", "path": "./data/qdrant", "collection": "docs"},
        "target": {"kind": "lancedb", "uri": "./data/lance", "table": "docs"},
        "units": {"by": "tenant", "field": "tenant", "count": 16},
        "copy": {"batch_size": 1000, "workers": 4},
        "state_uri": "./data/state",
    }
    raw.update(over)
    return raw


def test_issue_example_validates_and_resolves_paths_against_the_config_folder(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(base()))
    cfg = load_config(path)
    assert cfg.source.kind == "qdrant" and cfg.target.kind == "lancedb"
    assert cfg.source.path == str(tmp_path / "data" / "qdrant")
    assert cfg.target.uri == str(tmp_path / "data" / "lance")
    assert cfg.state_uri == str(tmp_path / "data" / "state")
    assert cfg.copy_cfg.batch_size == 1000 and cfg.copy_cfg.workers == 4


def test_object_store_uris_and_server_urls_are_kept_as_written():
    cfg = parse_config(base(
        source={"kind": "qdrant", "url": "http://127.0.0.1:6333", "api_key": "s3cr3t-key",
                "collection": "docs"},
        target={"kind": "lancedb", "uri": "s3://bucket/lance", "table": "docs"},
        state_uri="s3://bucket/state"))
    assert cfg.source.url == "http://127.0.0.1:6333"
    assert cfg.target.uri == "s3://bucket/lance" and cfg.state_uri == "s3://bucket/state"
    assert "s3cr3t" not in repr(cfg.source), "api_key must not show in logs"


def test_fingerprint_ignores_worker_count_but_not_units():
    a = parse_config(base())
    b = parse_config(base(copy={"batch_size": 1000, "workers": 9}))
    c = parse_config(base(units={"by": "id_range", "count": 4}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


@pytest.mark.parametrize("over, expected", [
    ({"units": {"by": "tenant"}}, "units.field is required when units.by is tenant"),
    ({"units": {"by": "hash"}}, "units.by"),
    ({"copy": {"batch_size": 0}}, "copy.batch_size"),
    ({"copy": {"max_points_per_s": -5}}, "copy.max_points_per_s"),
    ({"cutover": {"concurrency": 0}}, "cutover.concurrency"),
    ({"copy": {"workers": 2, "wrokers": 3}}, "copy.wrokers: unknown key"),
    ({"colour": "blue"}, "colour: unknown key"),
    ({"migration_id": "has space"}, "not a valid migration_id"),
    ({"source": {"kind": "mongo", "collection": "x"}}, "kind must be one of: qdrant, lancedb"),
    ({"source": {"kind": "qdrant", "collection": "docs"}},
     "give exactly one of path (Qdrant local mode folder) or url"),
    ({"source": {"kind": "qdrant", "collection": "docs", "path": "a", "url": "http://x"}},
     "give exactly one of path"),
    ({"target": {"kind": "lancedb", "uri": "./data/lance"}}, "target.lancedb.table: is required"),
    ({"transform": {"function": "not a ref"}}, "is not module:function"),
    ({"transform": {"drop_fields": ["a"], "rename_fields": {"a": "b"}}},
     "both renamed and dropped"),
    ({"target": {"kind": "qdrant", "path": "./data/qdrant", "collection": "docs"}},
     "source and target are the same collection"),
    ({"payload_schema": {"rank": "decimal"}}, "payload_schema.rank"),
])
def test_bad_config_names_the_field(over, expected):
    with pytest.raises(ConfigError) as exc:
        parse_config(base(**over))
    assert expected in str(exc.value)


def test_missing_state_uri_is_named():
    raw = base()
    del raw["state_uri"]
    with pytest.raises(ConfigError, match="state_uri: is required"):
        parse_config(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_refuses_bad_config_and_writes_nothing(tmp_path, capsys):
    raw = base(units={"by": "tenant"})
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    before = sorted(os.listdir(tmp_path))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "units.field is required when units.by is tenant" in err
    assert sorted(os.listdir(tmp_path)) == before, "nothing may be written for a bad config"


@pytest.mark.parametrize("over, named", [
    ({"target": {"kind": "pinecone2", "uri": "./data/lance", "table": "docs"}},
     "target: kind 'pinecone2' is not supported; kind must be one of: qdrant, lancedb"),
    ({"target": {"uri": "./data/lance", "table": "docs"}},
     "target: kind is required; kind must be one of: qdrant, lancedb"),
    ({"state_uri": "./plain-file/state"},
     "is a file, not a folder; point state_uri at a folder"),
], ids=["unknown-kind", "no-kind", "state-under-a-file"])
def test_cli_names_the_value_at_fault_with_no_traceback(tmp_path, capsys, over, named):
    """Before: an unknown kind was not named, and a state_uri under a regular file printed a
    Python traceback and exited 1."""
    (tmp_path / "plain-file").write_text("not a folder")
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(base(**over)))
    before = sorted(os.listdir(tmp_path))
    for verb in ("plan", "run", "verify"):
        assert main([verb, str(path)]) == 2, verb
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == before, "nothing may be written for a bad config"
