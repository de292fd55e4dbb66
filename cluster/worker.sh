#!/usr/bin/env bash
# One experiment of a sweep, run anywhere a job runner puts it (Slurm, Kubernetes, a shell loop):
#
#   cluster/worker.sh GIT_URL [REV] -- -S lenet.lr=0.02 -S train.epochs=8
#
# It clones GIT_URL (at REV, default: the default branch) into its own folder, pulls the data and
# the run-cache from the project's default DVC remote (stages the overrides leave unchanged are up to
# date; download and prepare are restored from the run-cache, the others' git-kept outputs are not),
# runs one `dvc exp run` with the given overrides, and pushes the experiment back: its DVC outputs
# and run-cache first, then its git ref, so that origin never lists an experiment whose outputs are
# nowhere. Any clone then sees it with `dvc exp pull origin NAME`.
# The experiment's name is CNNLAB_EXP_NAME, else one made from the job runner's ids.
# Its last line and exit code say what reached the remotes: "pushed" and 0 only when both the git ref
# and the outputs did; otherwise one line naming the cause and the fix, exit 1, and the clone is kept
# (its path in that line) so that nothing is lost.
# Needs: git, and dvc with the project's dependencies on PATH (the project's .venv, an image, a module).
set -euo pipefail

name=${CNNLAB_EXP_NAME:-sweep-${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-$(hostname -s)}}-${SLURM_ARRAY_TASK_ID:-${JOB_COMPLETION_INDEX:-$$}}}
usage() { echo "usage: $0 GIT_URL [REV] -- [dvc exp run options, e.g. -S key=value ...]" >&2; exit 2; }
fail() { echo "worker $name: $1" >&2; exit 1; }
last_error() { grep -E '^(ERROR|error|fatal)' <<<"$1" | tail -n 1 | cut -c1-300; }

[ $# -ge 1 ] || usage
origin=$1; shift
rev=""
# a REV never starts with "-": `worker.sh URL -S x=1` (no `--`) passes -S on to dvc exp run
if [ $# -gt 0 ] && [ "$1" != "--" ] && [ "${1#-}" = "$1" ]; then rev=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
for tool in git dvc; do
    command -v "$tool" >/dev/null || fail "$tool is not on PATH; activate the project's environment first (e.g. source .venv/bin/activate, or the image or module that has it)"
done

work=$(mktemp -d "${CNNLAB_WORK_DIR:-${TMPDIR:-/tmp}}/cnnlab-worker.XXXXXX")
pushed=""
# the clone goes only once everything reached the remotes; otherwise it holds the only copy
trap '[ -n "$pushed" ] && rm -rf "$work" || echo "worker $name: kept the clone $work/repo" >&2' EXIT

git clone --quiet ${rev:+--no-checkout} "$origin" "$work/repo"
cd "$work/repo"
[ -z "$rev" ] || git checkout --quiet "$rev"
head=$(git rev-parse HEAD)
ref="refs/exps/${head:0:2}/${head:2}/$name"  # where DVC keeps experiment NAME of this commit
echo "worker $name: $(git rev-parse --short HEAD) of $origin, overrides: $*"
taken() { [ -n "$(git ls-remote origin "$ref")" ]; }
taken && fail "origin already holds an experiment named $name on this commit (two jobs with one CNNLAB_EXP_NAME, or a rerun); give each job its own name"

# --allow-missing: outputs not on the remote yet are built; any other failure is the remote's
out=$(dvc pull --run-cache --allow-missing 2>&1) ||
    fail "dvc pull from the DVC remote failed ($(last_error "$out")); check the remote (dvc remote list, its path, credentials, network) and rerun"
dvc exp run --name "$name" "$@"

out=$(dvc push --run-cache 2>&1) ||
    fail "the outputs did not reach the DVC remote ($(last_error "$out")); nothing was pushed to origin; fix the remote, then in the kept clone: dvc push --run-cache && dvc exp push origin $name"
out=$(dvc exp push --no-cache origin "$name" 2>&1) ||
    fail "git could not push the experiment to origin ($(last_error "$out")); its outputs are on the DVC remote; fix origin, then in the kept clone: dvc exp push origin $name"
[ "$(git ls-remote origin "$ref" | cut -f1)" = "$(git rev-parse "$ref")" ] ||
    fail "origin holds another experiment named $name (another job pushed one first: $(tr '\n' ' ' <<<"$out")); give each job its own CNNLAB_EXP_NAME, or replace it from the kept clone with: dvc exp push --force origin $name"
pushed=yes
echo "worker $name: pushed; see it anywhere with: dvc exp pull origin $name && dvc exp show"
