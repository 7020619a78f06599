#!/usr/bin/env bash
# Bakes the kafka-agent image on the build instance (Amazon Linux 2023), as root. Run by
# kafka-agent.pkr.hcl's shell provisioner with ROLE, JAVA_PACKAGE, KAFKA_URL, KAFKA_SHA512,
# ZOOKEEPER_URL, ZOOKEEPER_SHA512, SERVICE_UID and BAKE_DIR (where the binary, systemd/ and
# files/ were uploaded). Installs Java and Kafka or ZooKeeper, the agent and its units
# (enabled), the default agent configuration, and keeps systemd-networkd and
# amazon-ec2-net-utils away from the agent's ENI and routing rules.
set -euo pipefail

say() { echo "provision: $*" >&2; }
die() { echo "provision: $*" >&2; exit 1; }

# Installs the units for role $2 under root $1 as the image has them: the project's units
# from systemd/ (the watchdog only for brokers), the service's own unit from files/, and the
# drop-in under the service's name. Also run by scripts/lint-artifacts as
# `provision.sh units <root> <role>` (BAKE_DIR = the repository) to verify them.
install_units() {
  local root=$1 role=$2 service u
  service=$role
  local units=(kafka-agent.service kafka-agent-signal.service)
  # The ZooKeeper image does not enable the watchdog (README, "The ZooKeeper role").
  if [ "$role" = kafka ]; then units+=(kafka-agent-watch.service); fi
  install -d -m 0755 "$root/etc/systemd/system"
  for u in "${units[@]}"; do
    if [ "$role" = kafka ]; then
      install -m 0644 "$BAKE_DIR/systemd/$u" "$root/etc/systemd/system/$u"
    else
      # systemd/README.md: a service not called kafka.service gets the drop-in under its
      # own name and the kafka.service names in the units' dependencies replaced.
      sed -E '/^(Before|After|Wants|Requires)=/ s/(^|[= ])kafka\.service/\1zookeeper.service/g' \
        "$BAKE_DIR/systemd/$u" >"$root/etc/systemd/system/$u"
      chmod 0644 "$root/etc/systemd/system/$u"
    fi
  done
  install -m 0644 "$BAKE_DIR/files/$service.service" "$root/etc/systemd/system/$service.service"
  install -D -m 0644 "$BAKE_DIR/systemd/kafka.service.d/10-kafka-agent.conf" \
    "$root/etc/systemd/system/$service.service.d/10-kafka-agent.conf"
  UNITS=("${units[@]}" "$service.service")
}

if [ "${1:-}" = units ]; then
  [ $# -eq 3 ] || die "usage: provision.sh units <root> <role>"
  : "${BAKE_DIR:?}"
  install_units "$2" "$3"
  printf '%s\n' "${UNITS[@]}"
  exit 0
fi

: "${ROLE:?}" "${JAVA_PACKAGE:?}" "${SERVICE_UID:?}" "${BAKE_DIR:?}"

case "$ROLE" in
  kafka) service=kafka ;;
  zookeeper) service=zookeeper ;;
  *) die "ROLE must be kafka or zookeeper, not '$ROLE'" ;;
esac

# --- packages ---------------------------------------------------------------------------
say "installing $JAVA_PACKAGE, jq, xfsprogs"
dnf -y -q install "$JAVA_PACKAGE" jq xfsprogs e2fsprogs tar gzip

# Downloads $1 to $3 and checks it against the SHA-512 $2, or, when $2 is empty, against the
# .sha512 file published beside it (Apache publishes either `sha512sum` output or
# `gpg --print-md SHA512` output: "file: HEX HEX ..." over several lines, upper case).
fetch() {
  local url=$1 sum=$2 out=$3 text
  say "downloading $url"
  curl -fsSL --retry 5 --retry-delay 5 -o "$out" "$url"
  if [ -z "$sum" ]; then
    text=$(curl -fsSL --retry 5 --retry-delay 5 "$url.sha512")
    case "$text" in
      *:*) sum=${text#*:} ;;
      *) sum=${text%% *} ;;
    esac
  fi
  sum=$(printf '%s' "$sum" | tr -d ' \t\r\n' | tr 'A-F' 'a-f')
  [[ $sum =~ ^[0-9a-f]{128}$ ]] || die "no SHA-512 for $url (got '$sum')"
  echo "$sum  $out" | sha512sum --check --quiet - || die "$url does not match its SHA-512"
}

# --- the service's user: fixed uid/gid, so data on a moved volume stays its own ---------
if ! getent group "$service" >/dev/null; then
  groupadd --system --gid "$SERVICE_UID" "$service"
fi
if ! getent passwd "$service" >/dev/null; then
  useradd --system --uid "$SERVICE_UID" --gid "$service" --home-dir "/opt/$service" \
    --no-create-home --shell /sbin/nologin "$service"
fi

# --- Kafka or ZooKeeper -----------------------------------------------------------------
tmp=$(mktemp -d)
if [ "$ROLE" = kafka ]; then
  : "${KAFKA_URL:?}"
  fetch "$KAFKA_URL" "${KAFKA_SHA512:-}" "$tmp/kafka.tgz"
  top=$(tar -tzf "$tmp/kafka.tgz" | awk -F/ 'NR == 1 { print $1 }')
  tar -xzf "$tmp/kafka.tgz" -C /opt
  chown -R root:root "/opt/$top"
  ln -sfn "/opt/$top" /opt/kafka
  # /etc/kafka holds the rendered server.properties (mode 0640, group kafka: [kafka] group).
  install -d -o root -g kafka -m 0750 /etc/kafka
  install -d -o kafka -g kafka -m 0750 /var/log/kafka
  # The agent mounts the id's volume here; kafka.service makes kafka-logs on it.
  install -d -o root -g root -m 0755 /var/lib/kafka
else
  : "${ZOOKEEPER_URL:?}"
  fetch "$ZOOKEEPER_URL" "${ZOOKEEPER_SHA512:-}" "$tmp/zookeeper.tgz"
  top=$(tar -tzf "$tmp/zookeeper.tgz" | awk -F/ 'NR == 1 { print $1 }')
  tar -xzf "$tmp/zookeeper.tgz" -C /opt
  chown -R root:root "/opt/$top"
  ln -sfn "/opt/$top" /opt/zookeeper
  # zoo.cfg and zoo.cfg.dynamic are rendered by kafka-agent at every boot; ZooKeeper
  # rewrites them (and writes zoo.cfg.dynamic.<version>) as the membership changes, so the
  # directory is its to write. The logging configuration comes from the distribution.
  install -d -o root -g zookeeper -m 0770 /etc/zookeeper
  for f in logback.xml log4j.properties; do
    if [ -e "/opt/zookeeper/conf/$f" ]; then install -m 0644 "/opt/zookeeper/conf/$f" /etc/zookeeper/; fi
  done
  install -d -o zookeeper -g zookeeper -m 0750 /var/log/zookeeper
  install -d -o root -g root -m 0755 /var/lib/zookeeper
  install -d -o root -g root -m 0755 /usr/local/libexec/kafka-agent
  install -m 0755 "$BAKE_DIR/files/zookeeper-myid" "$BAKE_DIR/files/zookeeper-ready" /usr/local/libexec/kafka-agent/
fi
rm -rf "$tmp"

# --- the agent, its configuration and units ---------------------------------------------
install -m 0755 "$BAKE_DIR/kafka-agent" /usr/local/bin/kafka-agent
/usr/local/bin/kafka-agent --version >/dev/null || die "/usr/local/bin/kafka-agent does not run here"
install -d -m 0755 /etc/kafka-agent /etc/kafka-agent/config.d
install -m 0644 "$BAKE_DIR/files/agent-$ROLE.toml" /etc/kafka-agent/agent.toml

install_units / "$ROLE"

# --- leave the agent's ENI and routing rules alone ---------------------------------------
# The agent routes its ENI itself (table 10000 + device number, `from <ip>` rules; README
# "Step 4: route"). On AL2023, amazon-ec2-net-utils configures every ENI it sees through
# systemd-networkd with the same table and priority numbers (lib/lib.sh: rule_base=10000,
# tableid=rule_base+100*network_card+device_number), and networkd removes routing rules it
# did not make (networkd.conf ManageForeignRoutingPolicyRules=, default yes).
#  1. networkd keeps foreign rules and routes: a drop-in in /etc/systemd/networkd.conf.d/.
#  2. the agent's interface is unmanaged: amazon-ec2-net-utils' documented override is a
#     file in /etc/systemd/network (README "Implementation", setup-policy-routes(8):
#     "Installed configuration can be overridden ... in /etc/systemd/network"); networkd
#     applies the first .network file, in lexical order, that matches a link, so ours
#     (60-) wins over net-utils' generated 70-<iface>.network and its 80-ec2.network (DHCP
#     on every ENA/ixgbevf/vif interface).
#  3. net-utils' per-interface units are masked for those names (its udev rule runs
#     `systemctl enable --now policy-routes@<iface>.service`), so it does not even write
#     config or reload networkd for that interface.
install -D -m 0644 "$BAKE_DIR/files/networkd-kafka-agent.conf" /etc/systemd/networkd.conf.d/60-kafka-agent.conf
index=$(sed -n 's/^eni_device_index *= *\([0-9][0-9]*\).*/\1/p' /etc/kafka-agent/agent.toml)
[ -n "$index" ] || die "no eni_device_index in /etc/kafka-agent/agent.toml"
# The ENI at device index N is ens<5+N> on Nitro (PCI slot), eth<N> or enX<N> on Xen.
names=("ens$((5 + index))" "eth$index" "enX$index")
install -d -m 0755 /etc/systemd/network
{
  echo "# Written by packer/provision.sh: the ENI kafka-agent attaches at device index $index is"
  echo "# the agent's to configure (addresses, table $((10000 + index)), rules); networkd and"
  echo "# amazon-ec2-net-utils leave it alone. See packer/provision.sh."
  echo "[Match]"
  echo "Name=${names[*]}"
  echo
  echo "[Link]"
  echo "Unmanaged=yes"
} >/etc/systemd/network/60-kafka-agent-eni.network
chmod 0644 /etc/systemd/network/60-kafka-agent-eni.network
if [ -e /usr/lib/systemd/system/policy-routes@.service ]; then
  for n in "${names[@]}"; do
    systemctl mask "policy-routes@$n.service" "refresh-policy-routes@$n.timer" >/dev/null
  done
fi

# --- enable, and leave a clean image -----------------------------------------------------
systemctl daemon-reload
systemctl enable "${UNITS[@]}"
systemctl is-enabled cloud-init.service >/dev/null || die "cloud-init is not enabled: user data would never run"
cloud-init clean --logs
rm -rf "$BAKE_DIR" /var/lib/kafka-agent
say "baked role $ROLE: $(/usr/local/bin/kafka-agent --version 2>&1 | head -n1)"
