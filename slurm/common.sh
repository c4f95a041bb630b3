# Sourced by slurm/*.sbatch: run one workflow inside the allocation, and resubmit the same job when
# the workflow stopped before the allocation's end (exit 75) so that the run continues where it was.
#   scoreda_run SCRIPT WORKFLOW [hydra overrides...]
# SCOREDA_MAX_RESUBMITS (default 20) caps the chain; SCOREDA_RESUBMITS counts it.

_job_field() {  # value of KEY= in `scontrol show job -o`
    sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"
}

_job_pattern() {  # an output path of this job back to its %j pattern: the job id as a whole number in
    # the file name only (a directory such as /tmp/run-23/ keeps its digits)
    local dir=${1%/*} base=${1##*/}
    base=$(sed -E "s/(^|[^0-9])$SLURM_JOB_ID([^0-9]|$)/\1%j\2/g" <<<"$base")
    [[ $1 == */* ]] && echo "$dir/$base" || echo "$base"
}

scoreda_resubmit() {  # SCRIPT ARGS...: the same job again, after this one, with its account/partition/qos/size
    local script=$1; shift
    local info n args=() v
    info=$(scontrol show job -o "$SLURM_JOB_ID")
    n=${SCOREDA_RESUBMITS:-0}
    if (( n >= ${SCOREDA_MAX_RESUBMITS:-20} )); then
        echo "scoreda: $n resubmissions already; not resubmitting (SCOREDA_MAX_RESUBMITS)" >&2
        return 1
    fi
    args+=(--dependency="afterany:$SLURM_JOB_ID" --nodes="${SLURM_JOB_NUM_NODES:-1}")
    v=$(_job_field NumTasks "$info"); [[ $v =~ ^[0-9]+$ ]] && args+=(--ntasks="$v")
    v=$(_job_field TimeLimit "$info"); [[ -n $v && $v != UNLIMITED ]] && args+=(--time="$v")
    v=$(_job_field Account "$info"); [[ -n $v && $v != "(null)" ]] && args+=(--account="$v")
    v=$(_job_field Partition "$info"); [[ -n $v ]] && args+=(--partition="$v")
    v=$(_job_field QOS "$info"); [[ -n $v && $v != "(null)" && $v != normal ]] && args+=(--qos="$v")
    v=$(_job_field StdOut "$info"); [[ -n $v ]] && args+=(--output="$(_job_pattern "$v")")
    v=$(_job_field StdErr "$info"); [[ -n $v ]] && args+=(--error="$(_job_pattern "$v")")
    args+=(--export="ALL,SCOREDA_RESUBMITS=$((n + 1))")
    sbatch "${args[@]}" "$script" "$@"
}

scoreda_run() {
    local script=$1 workflow=$2; shift 2
    local python=${SCOREDA_PYTHON:-.venv/bin/python} rc=0
    echo "scoreda: job ${SLURM_JOB_ID} on ${SLURM_JOB_NUM_NODES:-1} node(s) (${SLURM_JOB_NODELIST:-?}), resubmission ${SCOREDA_RESUBMITS:-0}"
    $python "$workflow" "$@" || rc=$?
    if (( rc == 75 )); then
        echo "scoreda: stopped before the allocation's end; resubmitting $script to continue" >&2
        scoreda_resubmit "$script" "$@" && return 0
    fi
    return "$rc"
}
