# Environment of scoreda on OLCF Frontier, sourced by slurm/frontier.sbatch (and by the workers of a
# block that platform=frontier submits from a login node). Override any module by exporting the
# variable first, e.g. SCOREDA_ROCM_MODULE=rocm/6.3.1.
#   venv (default):   make install on a login node once, with the modules below loaded
#                     (SCOREDA_VENV, default .venv; Cray MPICH from the module, not the mpich wheel)
#   container:        SCOREDA_CONTAINER=/path/scoreda.sif (containers/frontier.def); the host's
#                     Cray MPICH and Slurm are bound in
module load PrgEnv-gnu "${SCOREDA_ROCM_MODULE:-rocm}" craype-accel-amd-gfx90a cray-mpich "${SCOREDA_PYTHON_MODULE:-cray-python}"

# GPU-aware Cray MPICH, RCCL over the Slingshot NICs, HIP devices seen as torch's cuda devices.
export MPICH_GPU_SUPPORT_ENABLED=1
export NCCL_SOCKET_IFNAME=hsn0
export NCCL_NET_GDR_LEVEL=3
export FI_MR_CACHE_MONITOR=memhooks
export FI_CXI_ATS=0
export DS_ACCELERATOR=cuda
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-7}

# MIOpen's kernel database and cache on node-local NVMe (#SBATCH -C nvme), not the shared home:
# concurrent ranks writing one sqlite database on a network file system fail or stall.
export MIOPEN_USER_DB_PATH=/mnt/bb/$USER/miopen-${SLURM_JOB_ID:-login}
export MIOPEN_CUSTOM_CACHE_DIR=$MIOPEN_USER_DB_PATH

# Compute nodes have no internet: W&B writes offline runs (`wandb sync` them from a login node).
export WANDB_MODE=${WANDB_MODE:-offline}
export PYTHONUNBUFFERED=1

if [[ -n ${SCOREDA_CONTAINER:-} ]]; then
    # The workflow runs in the container; its job steps start the container's Python on the nodes.
    binds=/opt/cray,/usr/lib64/libcxi.so.1,/usr/lib64/libjansson.so.4,/var/spool/slurmd,/etc/slurm
    binds+=,/usr/bin/srun,/usr/bin/squeue,/usr/bin/scontrol,/usr/lib64/slurm,/run/munge
    export APPTAINERENV_LD_LIBRARY_PATH=/opt/cray/pe/mpich/default/ofi/gnu/12.3/lib:/opt/cray/pe/lib64:/usr/lib64:${CRAY_LD_LIBRARY_PATH:-}
    export SCOREDA_STAGE_PYTHON="apptainer exec --rocm --bind $binds,$PWD --pwd $PWD $SCOREDA_CONTAINER /opt/venv/bin/python"
    export SCOREDA_PYTHON=$SCOREDA_STAGE_PYTHON
else
    export SCOREDA_PYTHON=${SCOREDA_VENV:-$PWD/.venv}/bin/python
fi
