"""The cluster-launcher configs pass Ray's own validation and keep the secure defaults."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from helpers import REPO

CONFIGS = ["cluster.yaml", "cluster-local.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_validates_the_cluster_config(name):
    config = load(name)
    validate_config(prepare_config(copy.deepcopy(config)))      # what `ray up` runs before launching
    broken = copy.deepcopy(config)
    broken["head_node_type" if "available_node_types" in broken else "provider"] = (
        "no-such-type" if "available_node_types" in broken else {"type": "local"})
    with pytest.raises(Exception):  # noqa: B017 (Ray raises several types): the validation can fail
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("name", CONFIGS)
def test_secure_defaults(name):
    config = load(name)
    values = yaml.safe_dump(config)                             # what the launcher reads, comments left out
    assert "0.0.0.0" not in values and "::/0" not in values
    assert not re.search(r"(?i)aws_secret|aws_access_key|password|BEGIN [A-Z ]*PRIVATE KEY", values)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
    mlflow = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    # bound to the private address: the one the launcher reached the node at, or the node's first
    assert re.search(r'--host "\$\((echo \$SSH_CONNECTION \| cut -d. . -f3|hostname -I \| awk .\{print \$1\}.)\)"', mlflow)


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_a_start_unless_running_guard_does_not_match_its_own_shell(name):
    # Ray runs each command as `bash --login -c -i '...(command)'`: a `pgrep -f PATTERN` guard whose pattern
    # matches the command's own text finds that shell and never starts the server (found by ray up, for real).
    config = load(name)
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        for pattern in re.findall(r'pgrep[^|]*?-f "([^"]+)"', command):
            assert not re.search(pattern, command), (pattern, command)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_aws_nodes_use_our_security_group_not_rays_default():
    # Ray's default group opens SSH to 0.0.0.0/0 (autoscaler/_private/aws/config.py); naming ours skips it.
    config = load("cluster.yaml")
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"]
    script = (REPO / "cluster" / "make-security-group.sh").read_text()
    assert "--port 22 --cidr \"$cidr\"" in script and "refusing" in script
