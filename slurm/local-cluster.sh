#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost, for tests and CI (Debian's slurm-wlm and munge).
#
#   slurm/local-cluster.sh up [DIR]     install if missing (root + apt), write DIR/slurm.conf, start
#                                       munged, slurmctld and slurmd; prints `export SLURM_CONF=...`
#   slurm/local-cluster.sh down [DIR]   stop the daemons by their pid files
#   slurm/local-cluster.sh check        exit 0 when `up` can work here (root, and apt or slurmctld)
#
# No systemd is assumed: the daemons are started by hand in the foreground-less mode and stopped by
# pid file. DIR defaults to /tmp/scoreda-slurm. The node is this host with its real CPU count and
# memory; one partition `debug`, the default.
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/scoreda-slurm}

can_run() {
    [[ $(id -u) == 0 ]] || { echo "local Slurm needs root (to start munged and slurmd)"; return 1; }
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    command -v apt-get >/dev/null || { echo "local Slurm needs apt-get to install slurm-wlm"; return 1; }
}

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat >"$dir/slurm.conf" <<EOF
ClusterName=scoreda-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MailProg=/bin/true
ReturnToService=2
MpiDefault=pmi2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create >/dev/null
    runuser -u munge -- munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "munged did not start" >&2
    return 1
}

up() {
    can_run >&2 || exit 3
    install
    write_conf
    start_munge
    export SLURM_CONF=$dir/slurm.conf
    down_daemons
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 300); do
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.1
    done
    echo "local Slurm did not come up; logs in $dir/log" >&2
    sinfo >&2 || true
    exit 1
}

down_daemons() {
    local f pid
    for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        [[ -s $f ]] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

case $cmd in
    up) up ;;
    down) down_daemons ;;
    check) can_run ;;
    *) echo "usage: $0 up|down|check [DIR]" >&2; exit 2 ;;
esac
