#!/usr/bin/env bash
# Sets up replication for a vipgate cluster on a MariaDB server started with the options of
# mariadb-config.sh. Run `primary` on the server that takes writes first, then `replica` on
# every other one. Both are idempotent: a server already set up is left as it is.
# Used by the Vagrant lab and by the namespace lab behind the demo and the tests.
#
#   mariadb-setup.sh primary --secrets DIR [--socket PATH] [--demo-schema] [--writable]
#       creates the agent's account (vipgate@localhost, the GRANT of docs/mysql.md) and the
#       replication account (repl@'%'). --demo-schema adds the database `lab` (table
#       `writes`) and the account app@'%' that writes to it. The server stays read-only, as
#       it started: in promote mode the agent that wins ownership makes it writable.
#       --writable turns read_only off now (gate mode, where that is the operator's part).
#   mariadb-setup.sh replica --secrets DIR --primary HOST [--socket PATH] [--timeout SECONDS]
#       makes this fresh server (read-only, no transactions of its own) a GTID replica of
#       HOST, and waits (at most SECONDS, default 60) until it has applied everything HOST had
#       written. A server that replicates already, or is writable, is left as it is.
#
# DIR holds the passwords, one per file, as the agent reads them: mysql-password (vipgate),
# repl-password (repl) and, with --demo-schema, app-password (app).
# The server is reached as root through its socket (default /run/mysqld/mysqld.sock).
set -euo pipefail
shopt -s inherit_errexit

die() {
    echo "mariadb-setup.sh: error: $*" >&2
    exit 1
}
usage() {
    echo "usage:" >&2
    sed -n '7,16p' "$0" | sed 's/^# \{0,1\}//' >&2
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
writable=false
while (($#)); do
    case "$1" in
        --socket) socket=${2:?--socket needs a path}; shift 2 ;;
        --secrets) secrets=${2:?--secrets needs a directory}; shift 2 ;;
        --primary) primary=${2:?--primary needs a host}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
        --demo-schema) demo=true; shift ;;
        --writable) writable=true; shift ;;
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

# One field of SHOW SLAVE STATUS (empty when this server has no replication configured).
slave_field() {
    awk -v key="$1:" '$1 == key { $1 = ""; sub(/^ /, ""); print; exit }' <<<"$slave_status"
}
# Vertical output keeps the field names (which -N would drop).
slave_status_now() {
    mariadb --no-defaults --socket="$socket" -uroot --connect-timeout=5 -e 'SHOW SLAVE STATUS\G'
}
slave_status=$(slave_status_now)
source_host=$(slave_field Master_Host)

if [[ $role == primary ]]; then
    users=$(sql -e "SELECT GROUP_CONCAT(CONCAT(user, '@', host) ORDER BY user) FROM mysql.user
        WHERE (user, host) IN (('vipgate', 'localhost'), ('repl', '%'), ('app', '%'))")
    tables=$(sql -e "SELECT COUNT(*) FROM information_schema.TABLES
        WHERE TABLE_SCHEMA = 'lab' AND TABLE_NAME = 'writes'")
    complete=true
    wanted=(vipgate@localhost repl@%)
    $demo && wanted+=(app@%)
    for account in "${wanted[@]}"; do
        [[ ,$users, == *",$account,"* ]] || complete=false
    done
    if $demo && ((tables != 1)); then
        complete=false
    fi
    if $complete; then
        # Set up before — maybe since replaced as the primary: never write here again.
        echo "mariadb-setup.sh: primary: the accounts exist already; nothing to do" >&2
        exit 0
    fi
    if [[ -n $source_host ]]; then
        die "this server replicates from $source_host: run 'primary' only on the server that takes writes"
    fi
    agent=$(password mysql-password)
    repl=$(password repl-password)
    statements="CREATE USER IF NOT EXISTS vipgate@localhost IDENTIFIED BY '$agent';
GRANT PROCESS, REPLICA MONITOR, READ_ONLY ADMIN, CONNECTION ADMIN, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN ON *.* TO vipgate@localhost;
CREATE USER IF NOT EXISTS repl@'%' IDENTIFIED BY '$repl';
GRANT REPLICATION SLAVE ON *.* TO repl@'%';"
    if $demo; then
        app=$(password app-password)
        statements+="
CREATE DATABASE IF NOT EXISTS lab;
CREATE TABLE IF NOT EXISTS lab.writes (id BIGINT PRIMARY KEY, at TIMESTAMP(6) DEFAULT NOW(6));
CREATE USER IF NOT EXISTS app@'%' IDENTIFIED BY '$app';
GRANT SELECT, INSERT ON lab.* TO app@'%';"
    fi
    if $writable; then
        statements+="
SET GLOBAL read_only = OFF;"
    fi
    sql <<<"$statements"
    position=$(sql -e 'SELECT @@global.gtid_binlog_pos')
    echo "mariadb-setup.sh: primary: accounts created, at GTID $position$($writable && echo ', read_only OFF')" >&2
    exit 0
fi

if [[ -n $source_host ]]; then
    # Set up before: say what state it is in, waiting (within the deadline) for a replica that
    # is still connecting.
    while :; do
        io=$(slave_field Slave_IO_Running)
        applier=$(slave_field Slave_SQL_Running)
        read_only=$(sql -e 'SELECT @@global.read_only')
        if [[ $io == Yes && $applier == Yes ]]; then
            echo "mariadb-setup.sh: replica: already replicating from $source_host; nothing to do" >&2
            exit 0
        fi
        if [[ $io == No && $applier == No && $read_only == 0 ]]; then
            echo "mariadb-setup.sh: replica: replication from $source_host is stopped and this server is writable (a primary now); nothing to do" >&2
            exit 0
        fi
        ((SECONDS < deadline)) ||
            die "replication from $source_host is set up but not running (I/O thread: $io, SQL thread: $applier; $(slave_field Last_IO_Error) $(slave_field Last_SQL_Error)); see SHOW SLAVE STATUS"
        sleep 1
        slave_status=$(slave_status_now)
    done
fi
# Only a fresh server becomes a replica here: never one that takes writes, nor one with a
# history of its own (a former primary is the agent's to re-point, or the operator's).
if [[ $(sql -e 'SELECT @@global.read_only') == 0 ]]; then
    echo "mariadb-setup.sh: replica: this server is writable (a primary): not making it a replica; nothing to do" >&2
    exit 0
fi
history=$(sql -e 'SELECT @@global.gtid_binlog_pos')
if [[ -n $history ]]; then
    echo "mariadb-setup.sh: replica: warning: this server has transactions of its own (GTID $history) and no replication; left as it is" >&2
    exit 0
fi
[[ $primary =~ ^[A-Za-z0-9.:-]+$ ]] || die "--primary must be a host name or address, not '$primary'"
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
# current_pos: a server with transactions of its own that the primary lacks is refused
# (error 1236), not silently joined.
sql <<<"SET GLOBAL read_only = ON;
CHANGE MASTER TO MASTER_HOST='$primary', MASTER_USER='repl', MASTER_PASSWORD='$repl', MASTER_USE_GTID=current_pos;
START SLAVE;"
left=$((deadline - SECONDS))
((left > 0)) || left=1
caught_up=$(sql -e "SELECT MASTER_GTID_WAIT('$target', $left)")
if [[ $caught_up != 0 ]]; then
    slave_status=$(slave_status_now)
    die "not caught up with $primary (GTID $target) within ${timeout}s (I/O thread: $(slave_field Slave_IO_Running), SQL thread: $(slave_field Slave_SQL_Running); $(slave_field Last_IO_Error) $(slave_field Last_SQL_Error))"
fi
echo "mariadb-setup.sh: replica: replicating from $primary, caught up at GTID $target" >&2
