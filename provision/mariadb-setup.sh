#!/usr/bin/env bash
# Sets up replication for a vipgate cluster on a MariaDB server started with the options of
# mariadb-config.sh. Run `primary` on the server that takes writes first, then `replica` on
# every other one. Both are idempotent: a server already set up is left as it is.
# Used by the Vagrant lab and by the namespace lab behind the demo and the tests.
#
#   mariadb-setup.sh primary --secrets DIR [--socket PATH] [--demo-schema]
#       creates the agent's account (vipgate@localhost, the GRANT of docs/mysql.md) and the
#       replication account (repl@'%'), and turns read_only off. --demo-schema adds the
#       database `lab` (table `writes`) and the account app@'%' that writes to it.
#   mariadb-setup.sh replica --secrets DIR --primary HOST [--socket PATH] [--timeout SECONDS]
#       makes this server read-only and a GTID replica of HOST, and waits (at most SECONDS,
#       default 60) until it has applied everything HOST had written.
#
# DIR holds the passwords, one per file, as the agent reads them: mysql-password (vipgate),
# repl-password (repl) and, with --demo-schema, app-password (app).
# The server is reached as root through its socket (default /run/mysqld/mysqld.sock).
set -euo pipefail

die() {
    echo "mariadb-setup.sh: error: $*" >&2
    exit 1
}
usage() {
    echo "usage:" >&2
    sed -n '7,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

role=${1:-}
[[ $role == primary || $role == replica ]] || usage
shift
socket=/run/mysqld/mysqld.sock
secrets=""
primary=""
timeout=60
demo=false
while (($#)); do
    case "$1" in
        --socket) socket=${2:?--socket needs a path}; shift 2 ;;
        --secrets) secrets=${2:?--secrets needs a directory}; shift 2 ;;
        --primary) primary=${2:?--primary needs a host}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
        --demo-schema) demo=true; shift ;;
        *) echo "mariadb-setup.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
[[ -n $secrets ]] || die "--secrets DIR is required (the directory holding mysql-password and repl-password)"
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a whole number of seconds, not '$timeout'"
if [[ $role == replica && -z $primary ]]; then
    die "replica needs --primary HOST (the address of the server to replicate from)"
fi

# A password from DIR/NAME: its first line, which must be plain enough to sit in SQL quotes.
password() {
    local file="$secrets/$1" value
    [[ -r $file ]] || die "cannot read $file: create it (one line, e.g. openssl rand -hex 24)"
    IFS= read -r value <"$file" || true
    [[ $value =~ ^[A-Za-z0-9_.+/=-]{8,}$ ]] ||
        die "$file: the password must be at least 8 characters of A-Z a-z 0-9 _ . + / = -"
    printf '%s' "$value"
}

# As root, through the socket; statements on stdin (never on the command line, where `ps`
# would show the passwords).
sql() {
    mariadb --no-defaults --socket="$socket" -uroot -N -B --connect-timeout=5 "$@"
}
sql -e 'SELECT 1' >/dev/null || die "cannot reach the MariaDB server on $socket as root"
deadline=$((SECONDS + timeout))

if [[ $role == primary ]]; then
    source_host=$(sql -e "SHOW SLAVE STATUS" | cut -f2)
    if [[ -n $source_host ]]; then
        die "this server replicates from $source_host: run 'primary' only on the server that takes writes"
    fi
    if [[ $(sql -e "SELECT COUNT(*) FROM mysql.user WHERE user = 'vipgate'") != 0 ]]; then
        echo "mariadb-setup.sh: primary: the accounts exist already; nothing to do" >&2
        exit 0
    fi
    agent=$(password mysql-password)
    repl=$(password repl-password)
    statements="CREATE USER vipgate@localhost IDENTIFIED BY '$agent';
GRANT PROCESS, REPLICA MONITOR, READ_ONLY ADMIN, CONNECTION ADMIN, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN ON *.* TO vipgate@localhost;
CREATE USER repl@'%' IDENTIFIED BY '$repl';
GRANT REPLICATION SLAVE ON *.* TO repl@'%';"
    if $demo; then
        app=$(password app-password)
        statements+="
CREATE DATABASE lab;
CREATE TABLE lab.writes (id BIGINT PRIMARY KEY, at TIMESTAMP(6) DEFAULT NOW(6));
CREATE USER app@'%' IDENTIFIED BY '$app';
GRANT SELECT, INSERT ON lab.* TO app@'%';"
    fi
    statements+="
SET GLOBAL read_only = OFF;"
    sql <<<"$statements"
    echo "mariadb-setup.sh: primary: accounts created, read_only OFF, at GTID $(sql -e 'SELECT @@global.gtid_binlog_pos')" >&2
    exit 0
fi

existing=$(sql -e "SHOW SLAVE STATUS" | cut -f2)
if [[ -n $existing ]]; then
    echo "mariadb-setup.sh: replica: already replicating from $existing; nothing to do" >&2
    exit 0
fi
repl=$(password repl-password)
# The primary's position, read with the replication account: it also proves that the
# account exists there and that this host reaches it.
while :; do
    if out=$(MYSQL_PWD=$repl mariadb --no-defaults -h "$primary" -urepl -N -B --connect-timeout=2 \
        -e 'SELECT @@global.gtid_binlog_pos' 2>&1); then
        target=$out
        break
    fi
    ((SECONDS < deadline)) || die "the primary $primary did not answer as repl within ${timeout}s: $out"
    sleep 1
done
sql <<<"SET GLOBAL read_only = ON;
CHANGE MASTER TO MASTER_HOST='$primary', MASTER_USER='repl', MASTER_PASSWORD='$repl', MASTER_USE_GTID=slave_pos;
START SLAVE;"
left=$((deadline - SECONDS))
((left > 0)) || left=1
if [[ $(sql -e "SELECT MASTER_GTID_WAIT('$target', $left)") != 0 ]]; then
    die "not caught up with $primary (GTID $target) within ${timeout}s: $(sql -e 'SHOW SLAVE STATUS\G' | grep -E 'Running:|Last_.*Error:')"
fi
echo "mariadb-setup.sh: replica: replicating from $primary, caught up at GTID $target" >&2
