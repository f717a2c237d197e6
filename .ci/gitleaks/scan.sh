#!/usr/bin/env bash
# Scans the whole git history of the repository for secrets with the
# gitleaks version pinned in this folder's go.mod. Findings are printed
# redacted and fail the run.
set -euo pipefail
cd "$(dirname "$0")"
go run github.com/zricethezav/gitleaks/v8 git --redact --no-banner --exit-code 1 ../..
