#!/usr/bin/env bash
# The Vagrant lab's client (installed as /usr/local/bin/lab-writes on the client machine):
# inserts a row through the VIP every 0.1 s and prints, once a second, how many were
# acknowledged and by which server. Ctrl-C (or SIGTERM) stops it and checks that every
# acknowledged row is on the server now behind the VIP.
# Usage: lab-writes [VIP]   (default 192.0.2.50)
set -uo pipefail
vip=${1:-192.0.2.50}
MYSQL_PWD=$(cat ~/.lab-app-password) || exit 1
export MYSQL_PWD
acked=$(mktemp)
trap 'rm -f "$acked"' EXIT
# Each statement gets at most 5 s (then SIGTERM, and SIGKILL 1 s later), whatever the server does.
db() { timeout -k 1 5 mariadb --no-defaults -h "$vip" -uapp -N -B --connect-timeout=1 lab "$@"; }
server="CONCAT(@@hostname, ' (server ', @@server_id, ')')"

check() {
    echo
    local first last n missing
    n=$(wc -l <"$acked")
    if ((n == 0)); then
        echo "no row was acknowledged"
        exit 1
    fi
    first=$(head -1 "$acked")
    last=$(tail -1 "$acked")
    if ! present=$(db -e "SELECT id FROM writes WHERE id BETWEEN $first AND $last ORDER BY id"); then
        echo "cannot read the rows back through $vip"
        exit 1
    fi
    missing=$(comm -23 <(sort "$acked") <(sort <<<"$present") | wc -l)
    echo "$n rows acknowledged, $missing of them missing on $(db -e "SELECT $server")"
    exit $((missing > 0))
}
trap check INT TERM

second=$(date +%s)
ok=0
failed=0
by=""
error=""
while :; do
    id=$(date +%s%N)
    if out=$(db -e "INSERT INTO writes (id) VALUES ($id); SELECT $server" 2>&1); then
        echo "$id" >>"$acked"
        ok=$((ok + 1))
        by=$out
    else
        failed=$((failed + 1))
        error=${out##*ERROR }
    fi
    now=$(date +%s)
    if ((now != second)); then
        line="$(date -d "@$second" +%T)  $ok acknowledged${by:+ by $by}"
        ((failed)) && line+=", $failed failed (ERROR $error)"
        echo "$line"
        second=$now ok=0 failed=0 by=""
    fi
    sleep 0.1
done
