#!/usr/bin/env bash
# Provisions one machine of the Vagrant lab; Vagrant runs it as root on every `up` and
# `provision`, and every step is idempotent.  Usage: provision.sh NAME ADDRESS [SERVER_ID]
#   db1, db2 (with a SERVER_ID): MariaDB with the options and replication set-up of
#     provision/ (shared with the namespace lab behind the demo), then vipgate;
#   witness: vipgate only;  client: the MariaDB client, dig, and lab-writes.
# The shared folders (see the Vagrantfile): /vipgate/provision, /vipgate/vagrant (with the
# secrets the Vagrantfile made on the host), /vipgate/deb (the host's target/debian).
set -euo pipefail
name=${1:?usage: provision.sh NAME ADDRESS [SERVER_ID]}
address=${2:?usage: provision.sh NAME ADDRESS [SERVER_ID]}
server_id=${3:-}
share=/vipgate
secrets=$share/vagrant/secrets
primary=192.0.2.11

die() {
    echo "provision $name: error: $*" >&2
    exit 1
}
say() { echo "provision $name: $*"; }
install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

[[ -d $secrets ]] || die "$secrets is missing: the Vagrantfile creates vagrant/secrets on the host before 'vagrant up'"
grep -q "lab: vipgate" /etc/hosts || cat >>/etc/hosts <<HOSTS
# lab: vipgate
192.0.2.11 db1
192.0.2.12 db2
192.0.2.13 witness
192.0.2.100 client
HOSTS

if [[ $name == client ]]; then
    install_packages mariadb-client bind9-dnsutils iputils-ping
    install -m 0755 "$share/vagrant/lab-writes.sh" /usr/local/bin/lab-writes
    install -m 0600 -o vagrant -g vagrant "$secrets/app-password" /home/vagrant/.lab-app-password
    say "ready: vagrant ssh client -c lab-writes   (writes through the VIP 192.0.2.50)"
    exit 0
fi

if [[ -n $server_id ]]; then
    install_packages mariadb-server mariadb-client
    cnf=/etc/mysql/mariadb.conf.d/60-vipgate.cnf
    new=$(bash "$share/provision/mariadb-config.sh" "$server_id")
    if [[ ! -e $cnf || $(cat "$cnf") != "$new" ]]; then
        printf '%s\n' "$new" >"$cnf"
        if systemctl is-active -q vipgate; then
            # Restarting a primary's database is a failover: that is the operator's call.
            say "MariaDB options changed in $cnf: they apply at MariaDB's next restart (replicas first; on the owner, 'vipgate switchover' before)"
        else
            say "MariaDB options in $cnf; restarting MariaDB"
            systemctl restart mariadb
        fi
    fi
    if [[ $name == db1 ]]; then
        bash "$share/provision/mariadb-setup.sh" primary --secrets "$secrets" --demo-schema
    else
        # db1 may still be booting: wait for it, up to 15 minutes.
        bash "$share/provision/mariadb-setup.sh" replica --secrets "$secrets" --primary "$primary" --timeout 900
    fi
fi

install_packages curl
deb=$(find "$share/deb" -maxdepth 1 -name 'vipgate_*.deb' -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)
[[ -n $deb ]] || die "no vipgate_*.deb in the host's target/debian: run 'bash scripts/package.sh' in the repository, then 'vagrant rsync $name && vagrant provision $name'"
upgraded=false
sum=$(sha256sum "$deb" | cut -d' ' -f1)
stamp=/var/lib/vipgate-lab-package.sha256
if [[ ! -e $stamp || $(cat "$stamp") != "$sum" ]]; then
    arch=$(dpkg-deb -f "$deb" Architecture)
    [[ $arch == "$(dpkg --print-architecture)" ]] ||
        die "$(basename "$deb") is for $arch, this machine is $(dpkg --print-architecture)"
    say "installing $(basename "$deb")"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --reinstall --allow-downgrades "$deb" >/dev/null
    vipgate --version >/dev/null ||
        die "the packaged vipgate does not run here (built against a newer C library than Debian bookworm's 2.36?): build the package on bookworm"
    echo "$sum" >"$stamp"
    upgraded=true
fi

# The VIP goes on the interface that holds this machine's lab address.
interface=$(ip -o -4 addr show to "$address/32" | awk '{print $2; exit}')
[[ -n $interface ]] || die "no interface holds $address: is the private network up? (ip -4 addr)"
kind=$([[ -n $server_id ]] && echo database || echo witness)
config=/etc/vipgate/vipgate.toml
bash "$share/vagrant/vipgate-config.sh" "$interface" "$kind" >$config.new
chown root:vipgate $config.new
chmod 0640 $config.new
mv $config.new $config
files=(secret)
[[ -n $server_id ]] && files+=(mysql-password repl-password)
for f in "${files[@]}"; do
    install -m 0600 -o vipgate -g vipgate "$secrets/$f" "/etc/vipgate/$f"
done
# As the unit's user: also proves that it can read what the agent will read. Database hosts
# also check the agent's account and the server's GTID settings (--probe).
if [[ -n $server_id ]]; then
    setpriv --reuid=vipgate --regid=vipgate --init-groups vipgate check-config $config --probe
else
    setpriv --reuid=vipgate --regid=vipgate --init-groups vipgate check-config $config
fi
systemctl enable -q vipgate
if systemctl is-active -q vipgate && $upgraded; then
    # A new binary needs a restart; an owner hands ownership over first (a planned move).
    say "restarting vipgate on the new package"
    systemctl restart vipgate
elif systemctl is-active -q vipgate; then
    # Otherwise never a restart, which would move the VIP: a reload takes what may change live.
    systemctl reload vipgate || die "vipgate refused the new configuration (journalctl -u vipgate); restart it by hand when that is what you want"
else
    systemctl start vipgate
fi
say "vipgate is running:"
vipgate status || true
