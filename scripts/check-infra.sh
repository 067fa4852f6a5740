#!/usr/bin/env bash
# Validates infra/template.yaml offline: SAM's own validation (with and without its
# cfn-lint pass), cfn-lint on its own, and scripts/check-template-rules.py (the prod
# stack's auth rule evaluated for real parameter sets, authorizers, CORS, access log). No AWS account or network access to AWS is
# needed; dummy credentials keep the SDKs from looking for real ones.
#
# The tools live in their own virtual environment (MEDLABEL_SAM_VENV, default
# ~/.cache/medlabel/sam), not in the test venv: aws-sam-cli pins boto3/botocore to
# versions that would move the moto emulator's dependencies under it.
set -euo pipefail

SAM_CLI_VERSION=1.170.0
CFN_LINT_VERSION=1.58.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MEDLABEL_CACHE:-${HOME:-/root}/.cache/medlabel}"
venv="${MEDLABEL_SAM_VENV:-$cache/sam}"
template="$root/infra/template.yaml"

installed_version() { # package -> version or empty
  "$venv/bin/python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'
}

if [[ ! -x "$venv/bin/python" ]]; then
  python="$(command -v python3.11 || command -v python3)"
  echo "check-infra: creating $venv with $python"
  "$python" -m venv "$venv"
fi
if [[ "$(installed_version aws-sam-cli)" != "$SAM_CLI_VERSION" ||
      "$(installed_version cfn-lint)" != "$CFN_LINT_VERSION" ]]; then
  echo "check-infra: installing aws-sam-cli==$SAM_CLI_VERSION cfn-lint==$CFN_LINT_VERSION"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "aws-sam-cli==$SAM_CLI_VERSION" "cfn-lint==$CFN_LINT_VERSION"
fi

export AWS_ACCESS_KEY_ID=offline AWS_SECRET_ACCESS_KEY=offline AWS_SESSION_TOKEN=offline
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export SAM_CLI_TELEMETRY=0
unset AWS_PROFILE AWS_ENDPOINT_URL

cd "$root"
status=0
run() {
  echo "+ $*"
  if ! "$@"; then
    echo "check-infra: FAILED: $*" >&2
    status=1
  fi
}
run "$venv/bin/sam" validate --lint --template infra/template.yaml
run "$venv/bin/sam" validate --region us-east-1 --template infra/template.yaml
run "$venv/bin/cfn-lint" infra/template.yaml
# What the Rules decide for prod without an issuer, and the routes' authorizers.
run "$venv/bin/python" scripts/check-template-rules.py infra/template.yaml
if [[ $status -eq 0 ]]; then
  echo "check-infra: $template is valid"
fi
exit $status
