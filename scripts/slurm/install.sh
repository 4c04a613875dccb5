#!/usr/bin/env bash
# Install Debian's SLURM daemons, client commands and munge (for the real-SLURM test,
# tests/workflow/test_slurm.py). Needs root and apt-get; does nothing when they are installed already.
# It installs packages only: no daemon is started here (scripts/slurm/start.sh does that).
set -euo pipefail
need=()
for cmd in slurmctld slurmd sbatch munged; do
    command -v "$cmd" >/dev/null 2>&1 || need=(slurmctld slurmd slurm-client munge)
done
[ ${#need[@]} -eq 0 ] && exit 0
[ "$(id -u)" -eq 0 ] || { echo "scripts/slurm/install.sh: needs root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d: keep the packages' maintainer scripts from starting system daemons on machines
# where an init system would do so (we start our own, on private ports, and stop them again)
rcd=/usr/sbin/policy-rc.d
created_rcd=0
if [ ! -e "$rcd" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$rcd" && chmod 755 "$rcd" && created_rcd=1
fi
trap '[ "$created_rcd" = 1 ] && rm -f "$rcd"' EXIT
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
