"""Turn ``cluster-local.yaml`` into the loopback cluster that ``cluster/ray-up-loopback.sh`` launches.

The user's file is the source: every key it has is kept, and only what a one-machine, two-address cluster
cannot take from it is changed, each for the reason given beside it. What the launcher then runs (rsync of
the checkout, the setup commands, ``ray start`` on the head and through SSH on the worker, the MLflow server)
is the user's own file at work.

    python cluster/loopback_config.py cluster-local.yaml OUT.yaml --user sbmoe --key KEY
"""

from __future__ import annotations

import argparse
import sys

import yaml

HEAD, WORKER = "127.0.0.1", "127.0.0.2"


def loopback(cfg: dict, user: str, key: str) -> dict:
    """The loopback variant of a ``provider: type: local`` cluster config."""
    cfg = dict(cfg, cluster_name="sbmoe-loopback")
    cfg["provider"] = dict(cfg["provider"], head_ip=HEAD, worker_ips=[WORKER])
    cfg["auth"] = {"ssh_user": user, "ssh_private_key": key}
    cfg["min_workers"] = cfg["max_workers"] = 1
    setup = []
    for cmd in cfg["setup_commands"]:
        if "mount -t nfs" in cmd:
            # Both nodes are this machine: /mnt/shared is shared by being one folder (the script makes it).
            cmd = "test -w /mnt/shared"
        elif "download.pytorch.org" in cmd:
            # This machine reaches package registries only; `pip install torch==2.13.0` is its CPU build.
            cmd = "~/venv/bin/pip install -q torch==2.13.0"
        setup.append(cmd)
    cfg["setup_commands"] = setup
    # `ray stop` on the worker would stop the head too: they are one machine.
    cfg["worker_start_ray_commands"] = [c for c in cfg["worker_start_ray_commands"]
                                        if not c.rstrip().endswith("ray stop")]
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--user", required=True)
    p.add_argument("--key", required=True)
    a = p.parse_args(argv)
    with open(a.source) as f:
        cfg = yaml.safe_load(f)
    if cfg.get("provider", {}).get("type") != "local":
        print(f"{a.source}: provider.type={cfg.get('provider', {}).get('type')!r}: must be 'local'", file=sys.stderr)
        return 2
    with open(a.out, "w") as f:
        yaml.safe_dump(loopback(cfg, a.user, a.key), f, sort_keys=False, width=200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
