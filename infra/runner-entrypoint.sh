#!/bin/sh
# Entry point of the GPU runner image.
#
# SageMaker starts a training container as `IMAGE train` and an inference container as
# `IMAGE serve` (HTTP on port 8080: GET /ping, POST /invocations); the ECS job service
# starts `IMAGE worker`: the SQS worker, configured by MEDLABEL_JOB_QUEUE_URL,
# MEDLABEL_EVENTS_TABLE and MEDLABEL_BLOBS_BUCKET. Any other argument list is handed to medlabel-runner as is, so
# `docker run IMAGE gpu-check` works for a smoke test on a GPU host.
set -eu

case "${1:-}" in
  train)
    shift
    exec medlabel-runner sagemaker-train --root "${MEDLABEL_SAGEMAKER_ROOT:-/opt/ml}" "$@"
    ;;
  serve)
    shift
    # With a deployment's table and bucket (the stack sets both), the endpoint serves
    # the models published in its log and follows it; without, the model folder(s) in
    # /opt/ml/model.
    if [ -n "${MEDLABEL_EVENTS_TABLE:-}" ] && [ -n "${MEDLABEL_BLOBS_BUCKET:-}" ]; then
      set -- --table "$MEDLABEL_EVENTS_TABLE" --bucket "$MEDLABEL_BLOBS_BUCKET" "$@"
      model_dir="${MEDLABEL_MODEL_DIR:-/tmp/medlabel-models}"
    else
      model_dir="${MEDLABEL_MODEL_DIR:-/opt/ml/model}"
    fi
    exec medlabel-runner serve \
      --model-dir "$model_dir" \
      --addr "0.0.0.0:${SAGEMAKER_BIND_TO_PORT:-8080}" \
      --data-root "${MEDLABEL_DATA_ROOT:-/opt/ml}" \
      --device "${MEDLABEL_DEVICE:-auto}" \
      "$@"
    ;;
  worker)
    shift
    exec medlabel-runner sqs-worker --device "${MEDLABEL_DEVICE:-auto}" "$@"
    ;;
  "")
    echo "usage: IMAGE train | serve | worker | <medlabel-runner command> [options]" >&2
    exit 2
    ;;
  *)
    exec medlabel-runner "$@"
    ;;
esac
