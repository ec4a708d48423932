#!/usr/bin/env bash
# Prints the MariaDB server options a vipgate cluster relies on, for the server SERVER_ID.
# The same options on every database host: any of them may become the primary.
# Used by the Vagrant lab (as /etc/mysql/mariadb.conf.d/60-vipgate.cnf) and by the namespace
# lab behind the demo and the tests (as a --defaults-file).
# Usage: mariadb-config.sh SERVER_ID    (a positive integer, different on every server)
set -euo pipefail
id=${1:-}
if [[ ! $id =~ ^[1-9][0-9]{0,8}$ ]]; then
    echo "usage: mariadb-config.sh SERVER_ID  (a positive integer, unique in the cluster; got '$id')" >&2
    exit 2
fi
cat <<CNF
# Written by vipgate's provision/mariadb-config.sh.
[mariadb]
server_id = $id
# Binary log with GTIDs: a replica catches up, and a former primary rejoins, by GTID; strict
# mode refuses transactions that would make two servers' histories differ unnoticed.
log_bin = binlog
log_slave_updates = ON
binlog_format = ROW
gtid_strict_mode = ON
# Durable commits: what a client saw acknowledged survives a crash of this host.
sync_binlog = 1
innodb_flush_log_at_trx_commit = 1
# Every server starts read-only (fenced); only the owner's agent makes its database writable.
read_only = ON
# Semi-synchronous replication on both sides, everywhere: the agent turns the primary side on
# when it promotes and the replica side on when it rejoins. Without a connected semi-sync
# replica, commits do not wait (wait_no_slave OFF): no 10 s stall after a failover.
rpl_semi_sync_master_enabled = ON
rpl_semi_sync_slave_enabled = ON
rpl_semi_sync_master_wait_no_slave = OFF
rpl_semi_sync_master_timeout = 10000
# Wait for the acknowledgement before the commit becomes visible: no other session reads a
# row that a failover could then lose.
rpl_semi_sync_master_wait_point = AFTER_SYNC
# Clients connect through the VIP, which comes and goes: listen on every address.
bind_address = 0.0.0.0
skip_name_resolve = ON
CNF
