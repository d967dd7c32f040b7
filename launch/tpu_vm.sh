#!/usr/bin/env bash
# avatarjax on a Cloud TPU VM slice: run the same command on every worker over gcloud ssh.
#
#   export TPU_NAME=my-v5p-32 ZONE=us-east5-a PROJECT=my-project   # PROJECT optional
#   launch/tpu_vm.sh setup                  # copy this checkout (or clone REPO_URL) + pip install -e '.[tpu]'
#   launch/tpu_vm.sh run train --config configs/lm/synthface_small.py \
#       --workdir /mnt/runs/small --config.mesh.data=-1 --config.mesh.fsdp=4
#   launch/tpu_vm.sh stop                   # SIGTERM: checkpoint and stop
#   launch/tpu_vm.sh exec 'uptime'          # any shell command on all workers
#
# The workdir must be one directory that all workers share (each host writes its own
# shards of every checkpoint into it), and a local path: mount a bucket with gcsfuse or
# a Filestore/NFS share at the same place on every worker, e.g.
#   launch/tpu_vm.sh exec 'sudo mkdir -p /mnt/runs && sudo chown $USER /mnt/runs &&
#       gcsfuse --implicit-dirs my-bucket /mnt/runs'
#
# Every worker must run the same command at the same time: the processes of a
# multi-host slice only start training once all of them have joined.
#
# Variables
#   TPU_NAME    TPU VM name (required)
#   ZONE        its zone (required)
#   PROJECT     GCP project (default: gcloud's configured project)
#   REPO_DIR    checkout location on the workers, relative to the remote home
#               directory or absolute (default: avatarjax)
#   REPO_URL    setup: git clone this URL instead of copying the local tree
#   REPO_REF    setup with REPO_URL: branch or tag to check out
#   PYTHON      setup: remote Python >= 3.11 for the virtualenv (default: python3)
#   REMOTE_ENV  run: space-separated NAME=VALUE pairs exported on every worker,
#               e.g. REMOTE_ENV="XLA_FLAGS=--xla_dump_to=/tmp/dump JAX_TRACEBACK_FILTERING=off"
#   DETACH      run: 1 = start in the background with nohup, logging to
#               $REPO_DIR/logs/worker-<i>.log, and return at once (default: 0)
#   WORKER      which workers to address (default: all)
#
# How the processes find each other: on a GCE TPU VM the slice layout lives in the
# instance metadata (agent-worker-number, worker-network-endpoints, tpu-env), not in
# environment variables. `run` reads it on each worker and exports
# AVATARJAX_COORDINATOR_ADDRESS=<worker 0>:8482, AVATARJAX_NUM_PROCESSES=<workers> and
# AVATARJAX_PROCESS_ID=<worker number>. For a multi-slice (Multislice / queued
# resources) setup it instead exports MEGASCALE_COORDINATOR_ADDRESS from tpu-env, so
# avatarjax calls jax.distributed.initialize() and JAX works out the slice layout.
# Set TPU_AUTO_DIST=0 in REMOTE_ENV to skip all of this.
set -euo pipefail

prog=launch/tpu_vm.sh

usage() {
  cat >&2 <<EOF
usage: $prog setup
       $prog run <avatarjax args...>
       $prog stop
       $prog exec '<shell command>'

Needs TPU_NAME and ZONE (PROJECT optional); see the comments at the top of
this script for REPO_DIR, REPO_URL, REPO_REF, PYTHON, REMOTE_ENV, DETACH, WORKER.

example:
  TPU_NAME=my-v5p-32 ZONE=us-east5-a $prog setup
  TPU_NAME=my-v5p-32 ZONE=us-east5-a $prog run train \\
      --config configs/lm/synthface_small.py --workdir /mnt/runs/small
EOF
}

die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 2
}

if [[ $# -eq 0 ]]; then
  usage
  exit 2
fi
sub=$1
shift
case $sub in
  -h | --help | help)
    usage
    exit 0
    ;;
  setup | stop)
    [[ $# -eq 0 ]] || die "'$sub' takes no arguments"
    ;;
  run)
    [[ $# -gt 0 ]] || die "'run' needs avatarjax arguments, e.g. $prog run train --config FILE.py --workdir DIR"
    ;;
  exec)
    [[ $# -eq 1 ]] || die "'exec' takes one quoted shell command"
    ;;
  *)
    printf "%s: error: unknown subcommand '%s'\n\n" "$prog" "$sub" >&2
    usage
    exit 2
    ;;
esac

missing=()
[[ -n ${TPU_NAME:-} ]] || missing+=(TPU_NAME)
[[ -n ${ZONE:-} ]] || missing+=(ZONE)
if ((${#missing[@]})); then
  die "set ${missing[*]} (e.g. TPU_NAME=my-v5p-32 ZONE=us-east5-a $prog $sub ...)"
fi
command -v gcloud >/dev/null 2>&1 || die "gcloud not found: install the Google Cloud CLI and run 'gcloud auth login'"

REPO_DIR=${REPO_DIR:-avatarjax}
WORKER=${WORKER:-all}
DETACH=${DETACH:-0}
REMOTE_ENV=${REMOTE_ENV:-}
script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$script_dir/.." && pwd)

gcloud_common=(--zone "$ZONE")
if [[ -n ${PROJECT:-} ]]; then
  gcloud_common+=(--project "$PROJECT")
fi

# Run a bash script on the workers: remote_bash SCRIPT [ARGS...]. The remote login shell
# gets `bash -c SCRIPT tpu_vm ARGS...` with every word quoted by printf %q.
remote_bash() {
  local command
  command=$(printf '%q ' bash -c "$1" tpu_vm "${@:2}")
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_common[@]}" --worker="$WORKER" --command "$command"
}

# Shared prologue of the remote scripts: $1 is REPO_DIR.
remote_prologue='
set -euo pipefail
repo_dir=$1
shift
case $repo_dir in "~/"*) repo_dir=$HOME/${repo_dir#"~/"} ;; esac
'

# ------------------------------------------------------------------- setup
tmp=""
trap 'if [[ -n $tmp ]]; then rm -rf -- "$tmp"; fi' EXIT

setup_copy() {
  local tgz
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/tpu_vm.XXXXXX")
  tgz=$tmp/avatarjax-src.tgz
  if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked-but-not-ignored files that exist (no venv, no caches).
    git -C "$repo" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do
        if [[ -f $repo/$f ]]; then printf '%s\0' "$f"; fi
      done |
      tar -C "$repo" --null -T - -czf "$tgz"
  else
    tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude='*.egg-info' \
      --exclude='__pycache__' -czf "$tgz" .
  fi
  echo "[tpu_vm] copying $(du -h "$tgz" | cut -f1) of sources to $TPU_NAME:$REPO_DIR" >&2
  gcloud compute tpus tpu-vm scp "$tgz" "$TPU_NAME:/tmp/avatarjax-src.tgz" "${gcloud_common[@]}" --worker="$WORKER"
  remote_bash "$remote_prologue"'
mkdir -p "$repo_dir"
tar -xzf /tmp/avatarjax-src.tgz -C "$repo_dir"
rm -f /tmp/avatarjax-src.tgz
' "$REPO_DIR"
}

setup_clone() {
  remote_bash "$remote_prologue"'
url=$1 ref=$2
if [ -d "$repo_dir/.git" ]; then
  git -C "$repo_dir" fetch --tags origin
  if [ -n "$ref" ]; then git -C "$repo_dir" checkout "$ref"; fi
  git -C "$repo_dir" pull --ff-only || true
else
  git clone ${ref:+--branch "$ref"} "$url" "$repo_dir"
fi
' "$REPO_DIR" "$REPO_URL" "${REPO_REF:-}"
}

setup_install() {
  remote_bash "$remote_prologue"'
python=$1
cd "$repo_dir"
if ! "$python" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
  echo "[tpu_vm] $(hostname): $python is $("$python" -V 2>&1); avatarjax needs Python >= 3.11." >&2
  echo "[tpu_vm] install one (e.g. sudo apt-get install python3.11 python3.11-venv) and rerun with PYTHON=python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then "$python" -m venv .venv; fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e ".[tpu]"
echo "[tpu_vm] $(hostname): $(.venv/bin/python -c "import jax; print(\"jax\", jax.__version__)") installed in $PWD/.venv"
' "$REPO_DIR" "${PYTHON:-python3}"
}

# ------------------------------------------------------------------- run
# Remote: work out the distributed settings from the metadata server, then exec avatarjax
# with every output line prefixed by the worker number.
run_script="$remote_prologue"'
detach=$1
shift
while [ "$1" != "--" ]; do export "$1"; shift; done
shift
if [ ! -d "$repo_dir" ]; then
  echo "[tpu_vm] $(hostname): no checkout at $repo_dir: run tpu_vm.sh setup first (or set REPO_DIR)" >&2
  exit 1
fi
cd "$repo_dir"
if [ -x .venv/bin/avatarjax ]; then bin=$PWD/.venv/bin/avatarjax
elif command -v avatarjax >/dev/null; then bin=$(command -v avatarjax)
else echo "[tpu_vm] $(hostname): no avatarjax in $PWD/.venv: run tpu_vm.sh setup first" >&2; exit 1; fi

md() {
  curl -sf -H "Metadata-Flavor: Google" \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}
worker=$(md agent-worker-number 2>/dev/null || echo 0)
if [ "${TPU_AUTO_DIST:-1}" = 1 ] && [ -z "${AVATARJAX_COORDINATOR_ADDRESS:-}" ]; then
  megascale=$(md tpu-env 2>/dev/null | sed -n "s/^MEGASCALE_COORDINATOR_ADDRESS: *[\x27\"]\{0,1\}\([^\x27\"]*\).*/\1/p" || true)
  if [ -n "$megascale" ]; then
    export MEGASCALE_COORDINATOR_ADDRESS=$megascale   # multi-slice: JAX reads the rest
  elif endpoints=$(md worker-network-endpoints 2>/dev/null) && [ -n "$endpoints" ]; then
    IFS=, read -r -a eps <<<"$endpoints"
    if [ "${#eps[@]}" -gt 1 ]; then
      IFS=: read -r -a first <<<"${eps[0]}"   # "host" or old-style "name:id:ip"
      export AVATARJAX_COORDINATOR_ADDRESS="${first[${#first[@]}-1]}:${TPU_COORDINATOR_PORT:-8482}"
      export AVATARJAX_NUM_PROCESSES=${#eps[@]}
      export AVATARJAX_PROCESS_ID=$worker
    fi
  fi
fi
export PYTHONUNBUFFERED=1
echo "[tpu_vm] worker $worker ($(hostname)): coordinator ${AVATARJAX_COORDINATOR_ADDRESS:-${MEGASCALE_COORDINATOR_ADDRESS:-none}} processes ${AVATARJAX_NUM_PROCESSES:-?}: $bin $*" >&2
if [ "$detach" = 1 ]; then
  mkdir -p logs
  nohup setsid "$bin" "$@" >"logs/worker-$worker.log" 2>&1 </dev/null &
  echo "[tpu_vm] worker $worker: started pid $!, log $PWD/logs/worker-$worker.log" >&2
else
  awk_opts=""   # mawk (Ubuntu default) needs -W interactive to pass lines on at once
  case $(awk -W version 2>&1 </dev/null || true) in *mawk*) awk_opts="-W interactive" ;; esac
  exec > >(awk $awk_opts -v p="[w$worker] " "{ print p \$0; fflush() }") 2>&1
  exec "$bin" "$@"
fi
'

stop_script="$remote_prologue"'
cd "$repo_dir"
# The console script runs as "<venv>/bin/python <venv>/bin/avatarjax ...".
if pkill -TERM -f -- "(^| )$PWD/\.venv/bin/avatarjax( |$)"; then
  echo "[tpu_vm] $(hostname): sent SIGTERM to avatarjax (it saves a checkpoint and exits)"
else
  echo "[tpu_vm] $(hostname): no avatarjax running"
fi
'

case $sub in
  setup)
    if [[ -n ${REPO_URL:-} ]]; then
      setup_clone
    else
      setup_copy
    fi
    setup_install
    ;;
  run)
    env_args=()
    if [[ -n $REMOTE_ENV ]]; then
      read -r -a env_args <<<"$REMOTE_ENV"
      for kv in "${env_args[@]}"; do
        [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "REMOTE_ENV entry '$kv' is not NAME=VALUE"
      done
    fi
    [[ $DETACH == 0 || $DETACH == 1 ]] || die "DETACH must be 0 or 1, got '$DETACH'"
    remote_bash "$run_script" "$REPO_DIR" "$DETACH" ${env_args[@]+"${env_args[@]}"} -- "$@"
    ;;
  stop)
    remote_bash "$stop_script" "$REPO_DIR"
    ;;
  exec)
    remote_bash "$remote_prologue"'
cd "$repo_dir" 2>/dev/null || true
eval "$1"
' "$REPO_DIR" "$1"
    ;;
esac
