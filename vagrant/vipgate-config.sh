#!/usr/bin/env bash
# Prints /etc/vipgate/vipgate.toml for a machine of the Vagrant lab.
# Usage: vipgate-config.sh INTERFACE database|witness
#   INTERFACE: where the owner adds the VIP (the machine's interface on 192.0.2.0/24);
#   witness: without [mysql] (a witness has no database and gets no database password).
# Every machine gets the same [cluster] and [[node]] sections; an agent finds its own [[node]]
# by its host name (db1, db2, witness).
set -euo pipefail
interface=${1:-}
kind=${2:-}
if [[ ! $interface =~ ^[A-Za-z0-9_.:-]{1,15}$ || ! $kind =~ ^(database|witness)$ ]]; then
    echo "usage: vipgate-config.sh INTERFACE database|witness  (got '$interface' '$kind')" >&2
    exit 2
fi
cat <<TOML
# Written by vipgate's vagrant/vipgate-config.sh (the Vagrant lab). Reference:
# /usr/share/doc/vipgate/examples/vipgate.toml and /usr/share/doc/vipgate/operations.md.
[cluster]
name = "vagrant-lab"
secret_file = "secret"
port = 6987
heartbeat_interval_ms = 200
lease_ms = 1000
state_dir = "/var/lib/vipgate"

[[node]]
id = "db1"
address = "192.0.2.11"
priority = 150

[[node]]
id = "db2"
address = "192.0.2.12"
priority = 100

[[node]]
id = "witness"
address = "192.0.2.13"
witness = true

[[vip]]
address = "192.0.2.50/24"
interface = "$interface"

# The box runs Debian 12, whose kernel (6.1) cannot shorten an nftables set element's expiry,
# which the kernel fence needs (Linux 6.12+). Without it a killed or frozen agent's VIP is
# served until its address lifetime ends (about a second past the lease). On a Debian 13 box,
# or with bookworm-backports' 6.12 kernel, remove these two lines.
[fence]
kernel = false

[control]
socket = "/run/vipgate/vipgate.sock"
http = "127.0.0.1:9808"

# Every agent answers for the zone on its address: dig @192.0.2.13 primary.db.example.test
[dns]
zone = "db.example.test."
record = "primary"
ttl = 5
TOML
if [[ $kind == database ]]; then
    cat <<TOML

[mysql]
mode = "promote"
socket = "/run/mysqld/mysqld.sock"
user = "vipgate"
password_file = "mysql-password"
replication_user = "repl"
replication_password_file = "repl-password"
TOML
fi
