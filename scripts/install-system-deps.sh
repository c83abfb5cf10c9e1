#!/usr/bin/env bash
# Install the system packages the test suite runs against, if they are missing:
# PostgreSQL (server), SoftHSM2 (PKCS#11 HSM), Node.js + npm (for anvil and solcjs), chromium (console browser tests),
# gcc and libssl-dev (compiled cores). Needs root (CI runs as root);
# as a normal user it only reports what is missing.
set -euo pipefail

missing=()
have_pg_server() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_pg_server || missing+=(postgresql)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || ls /usr/lib/*/softhsm/libsofthsm2.so >/dev/null 2>&1 || missing+=(softhsm2)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# The console's browser tests drive Debian's chromium headless (tests/e2e/test_console_browser.py).
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The compiled cores (matching engine, the audit verifier's fast path) need a C compiler,
# and the verifier's fast path OpenSSL's libcrypto headers (tests/custody/audit/test_fastscan.py).
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/include/openssl/sha.h ] || missing+=(libssl-dev)
# promtool evaluates the alert rules' unit tests (tests/strongroom/test_shard_alerts.py, test_metrics.py).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: missing system packages: ${missing[*]} (install them to run every test)" >&2
  exit 0
fi
echo "installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
