#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost for tests: munged, slurmctld and slurmd, all
# with their configuration, keys, sockets, state, logs and pid files inside DIR, on private
# ports so that a SLURM already on the machine is left alone. The one thing outside DIR:
# /etc/slurm/slurm.conf becomes a link to DIR/slurm.conf (unless a slurm.conf is there already,
# then the script refuses; a link left by an earlier, killed test cluster is replaced), because the commands that Snakemake's SLURM job step runs inside a
# job (srun) do not see SLURM_CONF (the jobstep plugin removes SLURM_* variables); stop.sh
# removes the link.
#
#   scripts/slurm/start.sh DIR        # then:  export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm/stop.sh DIR         # stops exactly the daemons this started (DIR/pids)
#
# Environment: SLURMCTLD_PORT (16817), SLURMD_PORT (16818), SLURM_CPUS (nproc),
# SLURM_MEM_MB (90 % of the machine's memory). Every finished job is recorded by
# jobcomp/filetxt in DIR/jobcomp.txt. Needs root (slurmd runs jobs as their user).
set -euo pipefail
DIR=$(mkdir -p "$1" && cd "$1" && pwd)
CTLD_PORT=${SLURMCTLD_PORT:-16817}
SLURMD_PORT=${SLURMD_PORT:-16818}
CPUS=${SLURM_CPUS:-$(nproc)}
MEM=${SLURM_MEM_MB:-$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)}
HOST=$(hostname -s)
PIDS="$DIR/pids"

[ "$(id -u)" -eq 0 ] || { echo "scripts/slurm/start.sh: needs root" >&2; exit 1; }
if [ -s "$PIDS" ]; then
    echo "scripts/slurm/start.sh: $PIDS exists: a cluster from this folder runs; stop it first" >&2
    exit 1
fi
mkdir -p "$DIR"/{munge,state,spool,log}
chmod 755 "$DIR"

# munge: a fresh key for this cluster; munged runs as root (--force) on a private socket
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$DIR/munge"
chmod 400 "$DIR/munge/munge.key"
SOCKET="$DIR/munge/munge.socket"

cat > "$DIR/slurm.conf" <<CONF
# one-node test cluster written by scripts/slurm/start.sh
ClusterName=deepmirtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
KillWait=5
DefMemPerCPU=1000
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
echo "export SLURM_CONF=$DIR/slurm.conf" > "$DIR/env"
ETC=/etc/slurm/slurm.conf
# a link left by an earlier start.sh whose cluster is gone (its run was killed before stop.sh):
# the link dangles, or its slurm.conf is one this script wrote and none of the daemons listed
# beside it (DIR/pids: name pid) still runs under that name
stale_link() {
    [ -L "$ETC" ] || return 1
    local target; target=$(readlink "$ETC")
    [ -e "$target" ] || return 0
    head -n 1 "$target" | grep -q "^# one-node test cluster written by scripts/slurm/start.sh" || return 1
    local pids; pids="$(dirname "$target")/pids"
    [ -f "$pids" ] || return 0
    local name pid
    while read -r name pid; do
        [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && return 1
    done < "$pids"
    return 0
}
if stale_link; then
    echo "scripts/slurm/start.sh: removing $ETC -> $(readlink "$ETC"), left by a test cluster that no longer runs" >&2
    rm -f "$ETC"
fi
if [ -e "$ETC" ] || [ -L "$ETC" ]; then
    echo "scripts/slurm/start.sh: $ETC exists (a SLURM is configured on this machine): not touching it" >&2
    exit 1
fi
mkdir -p /etc/slurm
ln -s "$DIR/slurm.conf" "$ETC"
echo "$DIR/slurm.conf" > "$DIR/etc_link"
export SLURM_CONF="$DIR/slurm.conf"

# each daemon in the foreground under nohup, so that $! is the daemon's own pid
start() {  # name command...
    local name=$1; shift
    nohup "$@" > "$DIR/log/$name.out" 2>&1 &
    echo "$name $!" >> "$PIDS"
}
start munged munged --foreground --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
for _ in $(seq 50); do [ -S "$SOCKET" ] && break; sleep 0.1; done
munge -S "$SOCKET" -n | unmunge -S "$SOCKET" > /dev/null \
    || { echo "scripts/slurm/start.sh: munge does not work (see $DIR/log)" >&2; exit 1; }

start slurmctld slurmctld -D -i -f "$DIR/slurm.conf"
start slurmd slurmd -D -f "$DIR/slurm.conf" -N "$HOST"

# wait until the node takes jobs
for _ in $(seq 120); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
    case "$state" in idle*|mixed*|allocated*) echo "SLURM up: node $HOST $state, $CPUS CPUs, ${MEM} MB (SLURM_CONF=$DIR/slurm.conf)"; exit 0;; esac
    sleep 0.5
done
echo "scripts/slurm/start.sh: node $HOST not idle after 60 s (state '${state:-none}'); logs in $DIR/log" >&2
tail -n 20 "$DIR"/log/*.log >&2 || true
exit 1
