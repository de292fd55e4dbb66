#!/usr/bin/env bash
# One experiment of a sweep, run anywhere a job runner puts it (Slurm, Kubernetes, a shell loop):
#
#   cluster/worker.sh GIT_URL [REV] -- -S lenet.lr=0.02 -S train.epochs=8
#
# It clones GIT_URL (at REV, default: the default branch) into its own folder, pulls the data and
# the run-cache from the project's default DVC remote (so unchanged stages are restored, not rerun),
# runs one `dvc exp run` with the given overrides, and pushes the experiment (its git ref, its DVC
# outputs and its run-cache) back: any clone then sees it with `dvc exp pull origin NAME`.
# The experiment's name is CNNLAB_EXP_NAME, else one made from the job runner's ids.
# Needs: git, and dvc with the project's dependencies on PATH (the project's .venv, an image, a module).
set -euo pipefail

usage() { echo "usage: $0 GIT_URL [REV] -- [dvc exp run options, e.g. -S key=value ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
origin=$1; shift
rev=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then rev=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift

# a name unique across the sweep: the runner's job/array ids, else host and pid
name=${CNNLAB_EXP_NAME:-sweep-${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-$(hostname -s)}}-${SLURM_ARRAY_TASK_ID:-${JOB_COMPLETION_INDEX:-$$}}}
work=$(mktemp -d "${CNNLAB_WORK_DIR:-${TMPDIR:-/tmp}}/cnnlab-worker.XXXXXX")
trap 'rm -rf "$work"' EXIT

git clone --quiet ${rev:+--no-checkout} "$origin" "$work/repo"
cd "$work/repo"
[ -z "$rev" ] || git checkout --quiet "$rev"
echo "worker $name: $(git rev-parse --short HEAD) of $origin, overrides: $*"
dvc pull --quiet --run-cache --allow-missing || echo "worker $name: nothing to pull for some outputs; they will be built"
dvc exp run --name "$name" "$@"
dvc exp push --run-cache origin "$name"
echo "worker $name: pushed; see it anywhere with: dvc exp pull origin $name && dvc exp show"
