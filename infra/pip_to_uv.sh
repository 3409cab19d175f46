#!/usr/bin/env bash
# Print, one per line, the `uv pip install` options that give uv the package sources pip is
# configured with (its config files and PIP_* variables, as `pip config list` shows them):
# index-url, extra-index-url, find-links, no-index, constraint, trusted-host (a `cert`
# is for the caller: export it as SSL_CERT_FILE, which uv reads). uv keeps
# pip's choice of the best version over all indexes (--index-strategy unsafe-best-match).
# Usage: infra/pip_to_uv.sh <pip executable>
set -euo pipefail
pip="${1:?usage: pip_to_uv.sh <pip executable>}"

echo "--index-strategy"; echo "unsafe-best-match"
# lines look like  global.extra-index-url='a b'  or  :env:.find-links='/x'; a variable
# (":env:") overrides the files, as in pip, so it is read last and wins for single values
declare -A single=()
declare -a multi=()
while IFS= read -r line; do
    key="${line%%=*}"; value="${line#*=}"
    value="${value#\'}"; value="${value%\'}"
    name="${key##*.}"
    case "$name" in
        index-url) single[index-url]="$value" ;;
        no-index) case "$value" in 1|true|yes|on) single[no-index]=1 ;; esac ;;
        extra-index-url|find-links|constraint|trusted-host)
            for item in $value; do multi+=("$name" "$item"); done ;;
    esac
done < <(config="$("$pip" config list 2>/dev/null || true)"
         grep -v '^:env:' <<<"$config" || true; grep '^:env:' <<<"$config" || true)
[ -n "${single[index-url]:-}" ] && { echo "--index-url"; echo "${single[index-url]}"; }
[ -n "${single[no-index]:-}" ] && echo "--no-index"
declare -A seen=()
for ((i = 0; i < ${#multi[@]}; i += 2)); do
    name="${multi[i]}"; item="${multi[i + 1]}"
    [ -n "${seen[$name|$item]:-}" ] && continue
    seen[$name|$item]=1
    case "$name" in
        trusted-host) echo "--allow-insecure-host"; echo "$item" ;;
        *) echo "--$name"; echo "$item" ;;
    esac
done
