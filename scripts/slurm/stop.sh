#!/usr/bin/env bash
# Stop the daemons that scripts/slurm/start.sh DIR started: exactly the process ids it wrote to
# DIR/pids (in reverse order: slurmd, slurmctld, munged), TERM first and KILL after 10 s; and
# remove the /etc/slurm/slurm.conf link start.sh made. Prints what it stopped; exits 1 when a
# process survived.
set -uo pipefail
DIR=$1
PIDS="$DIR/pids"
remove_link() {
    local etc=/etc/slurm/slurm.conf
    if [ -f "$DIR/etc_link" ] && [ -L "$etc" ] && [ "$(readlink "$etc")" = "$(cat "$DIR/etc_link")" ]; then
        rm -f "$etc" && echo "removed the link $etc"
    fi
}
if [ ! -f "$PIDS" ]; then
    echo "scripts/slurm/stop.sh: no $PIDS: no daemon to stop"
    remove_link
    exit 0
fi
status=0
while read -r name pid; do
    [ -n "$pid" ] || continue
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$name ($pid) had already stopped"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null; sleep 0.5
    fi
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name ($pid) still running" >&2; status=1
    else
        echo "stopped $name ($pid)"
    fi
done < <(tac "$PIDS")
[ $status -eq 0 ] && mv "$PIDS" "$PIDS.stopped"
remove_link
exit $status
