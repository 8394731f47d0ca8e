"""A cluster node's firewall: an nftables table of the program's own that lets only the other
nodes (and loopback) reach the node's Erlang ports: epmd (4369), distribution (25672) and the
range the CLI tools listen on (35672-35682).

Its own table (`inet edd_infra`), so a site's rules are neither read nor changed: the table
only drops, and a drop in any table is final, while its accepts never open what a site's own
table drops. Loaded by a unit of its own (`edd-infra-firewall.service`) at boot before epmd
and RabbitMQ, replaced atomically (`delete table` and the new one in one `nft -f`
transaction) when the peers change, deleted when the unit stops.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

TABLE_FAMILY, TABLE_NAME = "inet", "edd_infra"
RULES_PATH = "/etc/edd-infra/nftables/cluster.nft"
UNIT_NAME = "edd-infra-firewall"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}.service"
NFT = "/usr/sbin/nft"


def _port(port: int | tuple[int, int]) -> str:
    if isinstance(port, tuple):
        low, high = port
        if not 1 <= low < high <= 65535:
            raise ValueError(f"port range {low}-{high}")
        return f"{low}-{high}"
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port}")
    return str(port)


def render_cluster_table(peers: Sequence[str], ports: Sequence[int | tuple[int, int]]) -> str:
    """The `nft -f` file: new connections to `ports` only from `peers` (the other nodes'
    addresses, a set per address family) or over loopback (a node dials itself at its own
    address through `lo`); replies to the node's own connections (which may come from a port in
    the CLI range: it lies within Linux's ephemeral ports) pass as established."""
    addresses = [ipaddress.ip_address(p) for p in peers]
    v4 = sorted({str(a) for a in addresses if a.version == 4}, key=ipaddress.ip_address)
    v6 = sorted({str(a) for a in addresses if a.version == 6}, key=ipaddress.ip_address)
    table = f"{TABLE_FAMILY} {TABLE_NAME}"
    lines = [
        "#!/usr/sbin/nft -f",
        "# Written by edd-infra: a RabbitMQ cluster node's Erlang ports, for its peers only.",
        # Declaring the table first makes the delete succeed on a host that has none yet: the
        # file replaces the table in one transaction, whatever was there.
        f"table {table}",
        f"delete table {table}",
        f"table {table} {{",
    ]
    for family, name, members in (("ipv4_addr", "peers_v4", v4), ("ipv6_addr", "peers_v6", v6)):
        lines += [f"  set {name} {{", f"    type {family}"]
        if members:
            lines.append(f"    elements = {{ {', '.join(members)} }}")
        lines.append("  }")
    lines += [
        "  chain input {",
        # Before a site's own filter chains (priority 0); a drop here is final whatever they say.
        "    type filter hook input priority filter - 10; policy accept;",
        f"    tcp dport {{ {', '.join(_port(p) for p in ports)} }} jump erlang_ports",
        "  }",
        "  chain erlang_ports {",
        "    ct state established,related accept",
        '    iif "lo" accept',
        "    ip saddr @peers_v4 accept",
        "    ip6 saddr @peers_v6 accept",
        "    drop",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_firewall_unit() -> str:
    """The unit that loads the table at boot, before the network, epmd and RabbitMQ come up,
    and deletes it when stopped. Ordered after a site's nftables.service (whose ruleset starts
    with `flush ruleset`) and part of it, so that service's restart loads this table again."""
    return f"""# Written by edd-infra.
[Unit]
Description=edd-infra: RabbitMQ cluster ports for the other nodes only (nftables table {TABLE_FAMILY} {TABLE_NAME})
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target epmd.socket epmd.service rabbitmq-server.service shutdown.target
After=nftables.service
PartOf=nftables.service
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={NFT} -f {RULES_PATH}
ExecReload={NFT} -f {RULES_PATH}
ExecStop=-{NFT} delete table {TABLE_FAMILY} {TABLE_NAME}

[Install]
WantedBy=sysinit.target
"""
