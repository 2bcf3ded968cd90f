#!/bin/bash
# capshard on Slurm: plan once, write the shards as a job array of N tasks, then finalize.
# Output goes to S3, so the nodes share nothing but the bucket (S3 output: see README "Object
# storage"; a shared file system path works the same).
#
#   deploy/slurm-array.sh            # on the login node: submits the three steps, chained
#
# Each step runs the capshard image with Apptainer (`apptainer run` uses the image's entrypoint).
# Credentials come from an env file readable only by you (chmod 600), e.g.
#   AWS_ACCESS_KEY_ID=...
#   AWS_SECRET_ACCESS_KEY=...
#   AWS_ENDPOINT_URL=https://s3.example.com      # optional: any S3-compatible store
# A failed array task can be resubmitted alone; a slice already written is a fast no-op, and
# finalize exits 1 naming the missing shards if a slice has not run. The slice is the array
# task's place in the array (`--cleanenv` hides SLURM_* from capshard's own defaults, which
# count from SLURM_ARRAY_TASK_MIN the same way), so `--array 1-8` works as well as `0-7`.
set -euo pipefail

IMAGE=${CAPSHARD_IMAGE:-docker://registry.example.com/capshard:latest}
ENV_FILE=${CAPSHARD_ENV_FILE:-$HOME/.capshard-s3.env}
SOURCE=${CAPSHARD_SOURCE:-s3://datasets/raw/recaptioned/annotations.parquet}
IMAGES=${CAPSHARD_IMAGES:-s3://datasets/raw/recaptioned/images}
OUT=${CAPSHARD_OUT:-s3://datasets/shards/recaptioned-v1}
TASKS=${CAPSHARD_TASKS:-8}

capshard() {
    apptainer run --cleanenv --env-file "$ENV_FILE" "$IMAGE" "$@"
}

case "${1:-submit}" in
submit)
    self=$(readlink -f "$0")
    export CAPSHARD_IMAGE=$IMAGE CAPSHARD_ENV_FILE=$ENV_FILE CAPSHARD_SOURCE=$SOURCE CAPSHARD_IMAGES=$IMAGES \
        CAPSHARD_OUT=$OUT CAPSHARD_TASKS=$TASKS
    plan=$(sbatch --parsable --job-name capshard-plan --cpus-per-task 2 --mem 8G --export ALL "$self" plan)
    write=$(sbatch --parsable --job-name capshard-write --dependency "afterok:$plan" --array "0-$((TASKS - 1))" \
        --cpus-per-task 4 --mem 4G --export ALL "$self" write)
    finalize=$(sbatch --parsable --job-name capshard-finalize --dependency "afterok:$write" \
        --cpus-per-task 1 --mem 4G --export ALL "$self" finalize)
    echo "submitted: plan $plan, write $write (array of $TASKS), finalize $finalize"
    ;;
plan)
    capshard plan "$SOURCE" --images "$IMAGES" --out "$OUT" --max-images-per-shard 10000
    ;;
write)
    capshard write "$OUT" --task "$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))" --tasks "$SLURM_ARRAY_TASK_COUNT"
    ;;
finalize)
    capshard finalize "$OUT"
    ;;
*)
    echo "usage: $0 [submit|plan|write|finalize]" >&2
    exit 2
    ;;
esac
