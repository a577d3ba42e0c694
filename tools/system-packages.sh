#!/usr/bin/env bash
# Install the Debian packages named as arguments that are not installed yet (the tests need redis-server, and chromium with chromium-driver for the dashboard):
# quietly, and with `apt-get update` only when the package lists do not have them (a fresh CI machine).
set -euo pipefail
missing=()
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "error: install ${missing[*]} (no apt-get on this machine)" >&2; exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "installing ${missing[*]}"
install() { $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
install 2>/dev/null || { $sudo apt-get update -qq >/dev/null && install; }
