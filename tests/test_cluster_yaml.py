"""cluster.yaml passes the validation `ray up` runs, and that validation has teeth.

`ray up` calls ``prepare_config`` (merges the provider's defaults) and then ``validate_config``
(Ray's JSON schema plus its cross-key checks). Because the defaults fill in many keys, the file
is also checked against the schema on its own, as written, so a key the schema requires cannot
silently come from the defaults.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("jsonschema")

from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(raw: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it talks to the cloud, plus the schema on the raw file."""
    import json

    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_validates():
    prepared = _validate(_load())
    assert prepared["provider"]["type"] == "aws"
    head = prepared["head_node_type"]
    assert head in prepared["available_node_types"]
    workers = [n for n in prepared["available_node_types"] if n != head]
    assert workers, "cluster.yaml needs a worker node type"
    assert all(prepared["available_node_types"][n]["max_workers"] >= 1 for n in workers)
    setup = " ".join(prepared["setup_commands"])
    assert "pip install" in setup and "ray-migrate" in setup
    start = " ".join(prepared["head_start_ray_commands"])
    assert "ray start --head" in start and "RAY_AUTH_MODE=token" in start
    assert "ray start --address" in " ".join(prepared["worker_start_ray_commands"])


def _drop(cfg: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    del node[last]


@pytest.mark.parametrize(
    "path",
    [
        "cluster_name",
        "provider",
        "provider.type",
        "head_node_type",
        "available_node_types.head.node_config",
        "available_node_types.worker.resources",
    ],
)
def test_removing_a_required_key_fails_validation(path):
    cfg = _load()
    _drop(cfg, path)
    import jsonschema

    # The schema names a missing key; prepare_config raises KeyError for a missing provider;
    # validate_config raises ValueError for a head_node_type that names no node type.
    with pytest.raises((jsonschema.ValidationError, KeyError, ValueError)):
        _validate(cfg)


def test_bad_worker_bounds_fail_validation():
    cfg = _load()
    cfg["available_node_types"]["worker"]["min_workers"] = cfg["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        _validate(cfg)
