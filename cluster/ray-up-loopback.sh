#!/usr/bin/env bash
# `ray up cluster-local.yaml`, really run, on this one machine: a head on 127.0.0.1 and a worker on
# 127.0.0.2, both reached by Ray's cluster launcher over SSH (an sshd on loopback only), each node's setup
# installing this checkout from the launcher's rsync. Then a small study submitted exactly as the README's
# cluster section says (`ray exec ... sbmoe study --address auto ...`), its MLflow runs
# read back from the head's MLflow server, and `ray down`.
#
#   sudo bash cluster/ray-up-loopback.sh            (from the repository root; needs root, sshd, rsync)
#
# Root because it adds a user `sbmoe` (the cluster's SSH user, passwordless sudo as a cloud image's user
# has), starts an sshd on 127.0.0.1 and 127.0.0.2 (port 22, keys only, that user only) and makes
# /mnt/shared. The Ray commands themselves run as that user, as a user runs them from a laptop (the
# launcher and the head's autoscaler share /tmp/ray here: one machine). It leaves the user and its ~/venv (a second run skips the installs) and removes the rest:
# sshd, the sudoers entry, the MLflow server. Not run in CI (no root/sshd there). State: $STATE.
# Debian: apt-get install -y openssh-server rsync sudo
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${STATE:-/tmp/sbmoe-loopback}
USER_NAME=sbmoe
PY=${PY:-.venv/bin/python}
DATA=${SBMOE_DATA_DIR:-$(cd .. && pwd)/shared/data/beir}
STUDY_ARGS=${STUDY_ARGS:---set name=loopback --set promote=0 --set space.base_model=[minilm-l3] \
  --set proxy.num_trials=4 --set proxy.seeds=1 --set proxy.max_concurrent=2 \
  --set train.data.test_datasets=[scifact,cran]}
T0=$(date +%s)
CLIENT=$STATE/client                     # the launcher's side: SSH key, generated cluster config
as_user() { sudo -u "$USER_NAME" -H --preserve-env=RAY_UP_enable_autoscaler_v2 "$@"; }
step() { printf '\n[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

[ "$(id -u)" = 0 ] || { echo "ray-up-loopback: needs root (adds a user, starts sshd)"; exit 2; }
for tool in sshd rsync sudo; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
    { echo "ray-up-loopback: $tool not found; apt-get install -y openssh-server rsync sudo"; exit 2; }
done
[ -f "$DATA/scifact/corpus.jsonl" ] || { echo "ray-up-loopback: no BEIR data at $DATA; set SBMOE_DATA_DIR"; exit 2; }

step "user $USER_NAME, SSH key, /mnt/shared (data linked from $DATA)"
mkdir -p "$STATE/sshd" "$CLIENT" && chmod 755 "$STATE" && chmod 700 "$STATE/sshd"
id "$USER_NAME" >/dev/null 2>&1 || useradd -m -s /bin/bash "$USER_NAME"
usermod -p '*' "$USER_NAME"   # no password, yet not locked: sshd without PAM refuses a locked ('!') account
echo "$USER_NAME ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/sbmoe-loopback
chown "$USER_NAME" "$CLIENT" && chmod 700 "$CLIENT"
[ -f "$CLIENT/id_ed25519" ] || as_user ssh-keygen -q -t ed25519 -N "" -f "$CLIENT/id_ed25519"
HOME_DIR=$(getent passwd "$USER_NAME" | cut -d: -f6)
install -d -m 700 -o "$USER_NAME" "$HOME_DIR/.ssh"
install -m 600 -o "$USER_NAME" "$CLIENT/id_ed25519.pub" "$HOME_DIR/.ssh/authorized_keys"
mkdir -p /mnt/shared && chown "$USER_NAME" /mnt/shared && ln -sfn "$DATA" /mnt/shared/beir

step "sshd on 127.0.0.1:22 and 127.0.0.2:22 (keys only, user $USER_NAME only)"
[ -f "$STATE/sshd/host_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -f "$STATE/sshd/host_ed25519"
cat > "$STATE/sshd/sshd_config" <<EOF
ListenAddress 127.0.0.1:22
ListenAddress 127.0.0.2:22
HostKey $STATE/sshd/host_ed25519
PidFile $STATE/sshd/sshd.pid
AllowUsers $USER_NAME
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
EOF
mkdir -p /run/sshd
[ -f "$STATE/sshd/sshd.pid" ] && kill "$(cat "$STATE/sshd/sshd.pid")" 2>/dev/null || true
/usr/sbin/sshd -f "$STATE/sshd/sshd_config"
cleanup() {
  step "cleanup: MLflow server, sshd, sudoers entry"
  pkill -u "$USER_NAME" -f "[m]lflow server" 2>/dev/null || true
  [ -f "$STATE/sshd/sshd.pid" ] && kill "$(cat "$STATE/sshd/sshd.pid")" 2>/dev/null || true
  rm -f /etc/sudoers.d/sbmoe-loopback
}
trap cleanup EXIT
for ip in 127.0.0.1 127.0.0.2; do
  as_user ssh -q -i "$CLIENT/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    "$USER_NAME@$ip" true || { echo "ray-up-loopback: ssh $USER_NAME@$ip failed"; exit 1; }
  echo "ssh $USER_NAME@$ip: ok"
done

step "the launcher: ray[default] in $HOME_DIR/launcher, the version this checkout's venv has (a user's laptop)"
RAY_VERSION=$("$PY" -c "import ray; print(ray.__version__)")
RAY=$HOME_DIR/launcher/bin/ray
[ -x "$RAY" ] || as_user /usr/bin/python3 -m venv "$HOME_DIR/launcher"
as_user "$HOME_DIR/launcher/bin/pip" install -q "ray[default]==$RAY_VERSION" pyyaml "mlflow-skinny>=3.13,<3.18"

step "cluster config: cluster-local.yaml with loopback addresses ($CLIENT/cluster.yaml)"
as_user test -f "$HOME_DIR/.ray/auth_token" || as_user "$RAY" get-auth-token --generate >/dev/null
"$PY" cluster/loopback_config.py cluster-local.yaml "$CLIENT/cluster.yaml" --user "$USER_NAME" --key "$CLIENT/id_ed25519"
chown "$USER_NAME" "$CLIENT/cluster.yaml"

step "the user's checkout: this work tree's files that git tracks or would add ($CLIENT/src)"
# Not the work tree itself: `ray up` reads every file under a file_mounts folder to hash it (rsync_exclude
# does not apply to the hash), so the checkout's .venv would be read in full, and it is root's here.
rm -rf "$CLIENT/src" && mkdir -p "$CLIENT/src"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$CLIENT/src"
chown -R "$USER_NAME" "$CLIENT/src"

# Ray 2.60's autoscaler v2 (its default since 2.50) never launched the local provider's worker here (the
# head's monitor allocated only the head, for 5 minutes); the v1 autoscaler does.
export RAY_UP_enable_autoscaler_v2=0
step "ray up (rsync the checkout, setup commands on each node, ray start, MLflow server on the head)"
(cd "$CLIENT/src" && as_user "$RAY" up -y --no-config-cache "$CLIENT/cluster.yaml")

step "waiting for the worker node (the head's autoscaler sets it up over SSH)"
for i in $(seq 1 120); do
  n=$(as_user "$RAY" exec "$CLIENT/cluster.yaml" "echo NODES=\$(ray list nodes --filter state=ALIVE 2>/dev/null | grep -c ALIVE)" 2>/dev/null \
      | grep -o "NODES=[0-9]*" | cut -d= -f2 || true)
  [ "${n:-0}" -ge 2 ] && break
  sleep 10
done
as_user "$RAY" exec "$CLIENT/cluster.yaml" "ray status"
[ "${n:-0}" -ge 2 ] || { echo "ray-up-loopback: the worker node did not join in 20 minutes"; exit 1; }

step "the study, as the README says: ray exec ... sbmoe study --address auto"
as_user "$RAY" exec "$CLIENT/cluster.yaml" "cd ~/sbmoe-ray && ~/venv/bin/sbmoe study --address auto \
  --set storage_path=/mnt/shared/studies $STUDY_ARGS"

step "where the trials ran, and the MLflow runs on the head's server"
as_user "$RAY" exec "$CLIENT/cluster.yaml" "ray list actors --detail --limit 1000 2>/dev/null | grep -E 'class_name|node_id' | sort | uniq -c | head -20; ray list nodes"
as_user env MLFLOW_TRACKING_URI=http://127.0.0.1:5000 "$HOME_DIR/launcher/bin/python" - <<'EOF'
import collections, mlflow
runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
print(len(runs), "MLflow runs;", dict(collections.Counter(r.info.status for r in runs)))
for r in runs[:3]:
    print(" ", r.info.run_name, r.info.status, {k: round(v, 4) for k, v in list(r.data.metrics.items())[:3]})
assert runs and all(r.info.status == "FINISHED" for r in runs), "some run is not FINISHED"
EOF

step "ray down"
as_user "$RAY" down -y "$CLIENT/cluster.yaml"
step "done"
