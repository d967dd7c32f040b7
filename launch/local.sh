#!/usr/bin/env bash
# Run N cooperating avatarjax processes on this machine.
#
#   launch/local.sh N <avatarjax args...>
#   launch/local.sh 2 train --config configs/lm/synthface_tiny.py \
#       --workdir /tmp/run --config.mesh.data=2
#
# Every process gets the same coordinator (127.0.0.1:<free port>) and process
# count, plus its own process id, through the variables that avatarjax reads
# before calling jax.distributed.initialize():
#   AVATARJAX_COORDINATOR_ADDRESS, AVATARJAX_NUM_PROCESSES, AVATARJAX_PROCESS_ID
# (and AVATARJAX_LOCAL_DEVICE_IDS when LAUNCH_DEVICES_PER_PROCESS is set).
#
# Output of process i (stdout and stderr together) is prefixed with "[pi] ".
# The script waits for all processes. When one exits non-zero the others get
# SIGTERM (then SIGKILL after LAUNCH_KILL_GRACE seconds) and the script exits
# with the status of the first failure; otherwise it exits 0.
# SIGTERM/SIGINT/SIGHUP sent to this script (Ctrl-C included) are passed on to
# every process as SIGTERM, the signal on which avatarjax saves a checkpoint and
# stops; the script then waits for them and exits with their status. A second
# signal sends SIGKILL. Each process runs in its own process group; SIGKILL
# goes to the whole group, and helpers a process leaves behind are killed once
# it has exited.
#
# Environment knobs (all optional):
#   AVATARJAX_BIN               program to run (default: <repo>/.venv/bin/avatarjax
#                               if present, else `avatarjax` on PATH)
#   LAUNCH_PORT                 coordinator port (default: a free port)
#   LAUNCH_DEVICES_PER_PROCESS  k > 0: process i sees local devices i*k .. i*k+k-1
#                               (sets AVATARJAX_LOCAL_DEVICE_IDS; for GPUs)
#   LAUNCH_KILL_GRACE           seconds between SIGTERM and SIGKILL (default 60)
set -euo pipefail

prog=launch/local.sh

usage() {
  cat >&2 <<EOF
usage: $prog N <avatarjax args...>

Runs N processes of \`avatarjax <args>\` on this machine, joined with
jax.distributed through a coordinator on 127.0.0.1.

  N     number of processes (positive integer)
  args  passed unchanged to every process, e.g.
        train --config configs/lm/synthface_tiny.py --workdir /tmp/run --config.mesh.data=2

Optional environment: AVATARJAX_BIN, LAUNCH_PORT, LAUNCH_DEVICES_PER_PROCESS,
LAUNCH_KILL_GRACE (see the comments at the top of this script).
EOF
}

say() { printf '[local.sh] %s\n' "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 2
}

# ---------------------------------------------------------------- arguments
if [[ $# -eq 0 ]]; then
  usage
  exit 2
fi
case $1 in
  -h | --help)
    usage
    exit 0
    ;;
esac
nproc=$1
shift
if ! [[ $nproc =~ ^[1-9][0-9]*$ ]]; then
  printf "%s: error: N must be a positive integer, got '%s'\n\n" "$prog" "$nproc" >&2
  usage
  exit 2
fi
if [[ $# -eq 0 ]]; then
  printf '%s: error: no avatarjax arguments given\n\n' "$prog" >&2
  usage
  exit 2
fi

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$script_dir/.." && pwd)

# ---------------------------------------------------------------- tools
if [[ -x $repo/.venv/bin/python ]]; then
  python=$repo/.venv/bin/python
else
  python=python3
fi

if [[ -n ${AVATARJAX_BIN:-} ]]; then
  bin=$AVATARJAX_BIN
elif [[ -x $repo/.venv/bin/avatarjax ]]; then
  bin=$repo/.venv/bin/avatarjax
elif bin=$(command -v avatarjax); then
  :
else
  die "no avatarjax program found: create $repo/.venv (pip install -e .), put avatarjax on PATH, or set AVATARJAX_BIN"
fi
if [[ $bin == */* ]]; then
  [[ -x $bin && ! -d $bin ]] || die "AVATARJAX program '$bin' is not an executable file"
else
  command -v -- "$bin" >/dev/null || die "AVATARJAX program '$bin' not found on PATH"
fi

grace=${LAUNCH_KILL_GRACE:-60}
[[ $grace =~ ^[0-9]+$ ]] || die "LAUNCH_KILL_GRACE must be a whole number of seconds, got '$grace'"

per_proc=${LAUNCH_DEVICES_PER_PROCESS:-}
if [[ -n $per_proc ]] && ! [[ $per_proc =~ ^[1-9][0-9]*$ ]]; then
  die "LAUNCH_DEVICES_PER_PROCESS must be a positive integer, got '$per_proc'"
fi

if [[ -n ${LAUNCH_PORT:-} ]]; then
  [[ $LAUNCH_PORT =~ ^[0-9]+$ ]] && ((LAUNCH_PORT > 0 && LAUNCH_PORT < 65536)) ||
    die "LAUNCH_PORT must be a TCP port number, got '$LAUNCH_PORT'"
  port=$LAUNCH_PORT
else
  # Ask the kernel for a free port. It is released again before the
  # coordinator (process 0) binds it, which is good enough on one machine.
  port=$("$python" -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
') || die "could not pick a free port with $python"
fi

# Prefix filter: awk with fflush() after every line (awk also ends a last,
# unterminated line with a newline, so lines of different processes never get
# glued together). mawk block-buffers its input unless told otherwise.
awk_opts=()
awk_version=$(awk -W version 2>&1 </dev/null || true)
if [[ $awk_version == *mawk* ]]; then
  awk_opts=(-W interactive)
fi
prefix_lines() { awk ${awk_opts[@]+"${awk_opts[@]}"} -v p="[p$1] " '{ print p $0; fflush() }'; }

# ---------------------------------------------------------------- state
pids=()        # avatarjax process ids, index = process id
alive=()       # 1 while that process has not been reaped
filters=()     # prefixing filters
remaining=0
first_rc=0     # exit status of the first process that failed
stopping=0     # 1 once SIGTERM went out to the processes
kill_at=-1     # $SECONDS value at which survivors get SIGKILL (-1: none)
killed=0
got_signal=""  # name of the signal that asked us to stop

tmp=$(mktemp -d "${TMPDIR:-/tmp}/avatarjax-local.XXXXXX")

signal_all() { # signal name; skips processes already reaped
  # SIGTERM goes to the avatarjax processes themselves (as Kubernetes does), so
  # that their helpers (data loader workers, ...) stay up while they save a
  # checkpoint. SIGKILL goes to each one's whole process group.
  local i
  for ((i = 0; i < ${#pids[@]}; i++)); do
    if ((alive[i])); then
      if [[ $1 == KILL ]]; then
        kill -s KILL -- "-${pids[i]}" 2>/dev/null || kill -s KILL "${pids[i]}" 2>/dev/null || true
      else
        kill -s "$1" "${pids[i]}" 2>/dev/null || true
      fi
    fi
  done
}

kill_groups() { # SIGKILL every process group we started, reaped leaders included
  local pid
  for pid in "${pids[@]}"; do
    kill -s KILL -- "-$pid" 2>/dev/null || true
  done
}

stop_all() { # reason
  if ((stopping)); then
    return
  fi
  stopping=1
  if ((remaining > 0)); then
    say "$1: sending SIGTERM to the remaining $remaining process(es)"
    signal_all TERM
    kill_at=$((SECONDS + grace))
  fi
}

on_signal() { # signal name
  trap '' "$1" # stay quiet while we handle it
  if ((stopping)); then
    say "got SIG$1 again: sending SIGKILL"
    signal_all KILL
    killed=1
  else
    got_signal=$1
    stop_all "got SIG$1"
  fi
  trap "on_signal $1" "$1"
}

cleanup() {
  # Only does something when we leave early (an error in this script):
  # make sure no process outlives the launcher.
  if ((remaining > 0)); then
    kill_groups
  fi
  rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP

# ---------------------------------------------------------------- launch
export AVATARJAX_COORDINATOR_ADDRESS="127.0.0.1:$port"
export AVATARJAX_NUM_PROCESSES="$nproc"
export PYTHONUNBUFFERED="${PYTHONUNBUFFERED:-1}" # lines show up as they are printed

say "starting $nproc process(es) of $bin $*"
say "coordinator 127.0.0.1:$port"

for ((i = 0; i < nproc; i++)); do
  if ((stopping)); then # a signal came in while we were still starting up
    break
  fi
  env_i=("AVATARJAX_PROCESS_ID=$i")
  if [[ -n $per_proc ]]; then
    ids=$((i * per_proc))
    for ((d = 1; d < per_proc; d++)); do
      ids+=",$((i * per_proc + d))"
    done
    env_i+=("AVATARJAX_LOCAL_DEVICE_IDS=$ids")
  fi
  fifo=$tmp/p$i
  mkfifo "$fifo"
  # The filter stays in our process group (it keeps the terminal); the
  # avatarjax process gets a group of its own (set -m) so that it and any
  # helpers it forks can be killed together.
  prefix_lines "$i" <"$fifo" &
  filters+=("$!")
  set -m
  env "${env_i[@]}" "$bin" "$@" <"/dev/null" >"$fifo" 2>&1 &
  pids+=("$!")
  set +m
  alive+=(1)
  remaining=$((remaining + 1))
done

# ---------------------------------------------------------------- supervise
# Poll rather than `wait -n` so that this works with any bash >= 4 and the
# signal traps run promptly (at most one poll interval late).
while ((remaining > 0)); do
  for ((i = 0; i < ${#pids[@]}; i++)); do
    ((alive[i])) || continue
    if kill -0 "${pids[i]}" 2>/dev/null; then
      continue
    fi
    rc=0
    wait "${pids[i]}" || rc=$?
    alive[i]=0
    remaining=$((remaining - 1))
    if ((rc != 0)); then
      say "process $i exited with status $rc"
      if ((first_rc == 0)); then
        first_rc=$rc
      fi
      stop_all "process $i failed"
    fi
  done
  if ((remaining > 0)); then
    if ((kill_at >= 0 && !killed && SECONDS >= kill_at)); then
      say "still $remaining process(es) running ${grace}s after SIGTERM: sending SIGKILL"
      signal_all KILL
      killed=1
    fi
    sleep 0.2
  fi
done

# Let the prefix filters print the last lines. A filter only ends when every
# writer is gone, so if a process left helpers behind that still hold its
# output open, give them a few seconds and then kill them.
drain_until=$((SECONDS + 5))
for ((i = 0; i < ${#filters[@]}; i++)); do
  while kill -0 "${filters[i]}" 2>/dev/null && ((SECONDS < drain_until)); do
    sleep 0.1
  done
  if kill -0 "${filters[i]}" 2>/dev/null; then
    say "process $i left child processes behind; killing them"
    kill -s KILL -- "-${pids[i]}" 2>/dev/null || true
  fi
  wait "${filters[i]}" || true
done

if [[ -n $got_signal ]]; then
  if ((first_rc == 143)); then
    say "stopped on SIG$got_signal; exit status 143 (what avatarjax train returns after its preemption checkpoint)"
  else
    say "stopped on SIG$got_signal; exit status $first_rc"
  fi
elif ((first_rc != 0)); then
  say "failed (first failure status $first_rc)"
else
  say "all $nproc process(es) finished"
fi
exit "$first_rc"
