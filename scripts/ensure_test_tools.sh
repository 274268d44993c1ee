#!/usr/bin/env bash
# Install the system tools the test suite drives for real: Debian's chromium (dashboard tests,
# through Playwright with executable_path), Node.js (aws-cdk-lib's jsii runtime for `cdk synth`) and
# Prometheus (monitoring/ is tested by a real Prometheus scraping a real server).
# A fresh CI machine has only Python and pip; this makes `make test` self-sufficient there.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${need[*]}: install them (Debian: apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing ${need[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
