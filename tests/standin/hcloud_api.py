# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A LOCAL STAND-IN for the few Hetzner Cloud API endpoints playbooks/provision_hetzner.yml and the
hcloud inventory use. It is not Hetzner's API and never proof that the real API behaves this way.

The request and response shapes follow Hetzner's published API reference (https://docs.hetzner.cloud):
resources under /v1/<collection> with ``name`` and ``label_selector`` filters and ``meta.pagination``,
one resource as ``{"<singular>": {...}}``, writes that return ``{"action": {...}}`` polled at
``/<collection>/actions/<id>``, errors as ``{"error": {"code", "message"}}``. Everything lives in
memory; actions finish at once. The tests reach it through the collection's ``api_endpoint`` option
on loopback. What the real API does beyond this (quotas, rate limits, validation of each field,
timing) is checked by hand against a real project (docs/provisioning.md, "Manual check").

Extra endpoints for tests, under /__standin/: ``state`` (every resource), ``log`` (every request
after the stand-in's own: method, path, body) and ``seed`` (POST a server created by someone else).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CREATED = "2026-01-01T00:00:00+00:00"
SINGULAR = {
    "servers": "server", "ssh_keys": "ssh_key", "firewalls": "firewall", "networks": "network",
    "placement_groups": "placement_group", "floating_ips": "floating_ip", "load_balancers": "load_balancer",
    "server_types": "server_type", "locations": "location", "images": "image", "datacenters": "datacenter",
    "load_balancer_types": "load_balancer_type", "primary_ips": "primary_ip", "zones": "zone",
}
LOCATIONS = [
    {"id": 1, "name": "fsn1", "description": "Falkenstein DC Park 1", "country": "DE", "city": "Falkenstein",
     "latitude": 50.47612, "longitude": 12.370071, "network_zone": "eu-central"},
    {"id": 2, "name": "nbg1", "description": "Nuremberg DC Park 1", "country": "DE", "city": "Nuremberg",
     "latitude": 49.452102, "longitude": 11.076665, "network_zone": "eu-central"},
    {"id": 3, "name": "hel1", "description": "Helsinki DC Park 1", "country": "FI", "city": "Helsinki",
     "latitude": 60.169855, "longitude": 24.938379, "network_zone": "eu-central"},
]


def _server_type(type_id, name, cores, memory, disk, cpu_type, architecture="x86"):
    return {"id": type_id, "name": name, "description": name.upper(), "cores": cores, "memory": memory,
            "disk": disk, "storage_type": "local", "cpu_type": cpu_type, "architecture": architecture,
            "category": "dedicated" if cpu_type == "dedicated" else "shared", "deprecation": None,
            "deprecated": False, "included_traffic": 21990232555520, "prices": [],
            "locations": [{"id": loc["id"], "name": loc["name"], "deprecation": None} for loc in LOCATIONS]}


SERVER_TYPES = [
    _server_type(96, "ccx13", 2, 8.0, 80, "dedicated"),
    _server_type(97, "ccx23", 4, 16.0, 160, "dedicated"),
    _server_type(98, "ccx33", 8, 32.0, 240, "dedicated"),
    _server_type(22, "cpx31", 4, 8.0, 160, "shared"),
    _server_type(45, "cax21", 4, 8.0, 80, "shared", "arm"),
]
IMAGES = [
    {"id": 114690387, "name": "debian-12", "description": "Debian 12", "type": "system", "status": "available",
     "os_flavor": "debian", "os_version": "12", "architecture": "x86", "rapid_deploy": True, "deprecated": None,
     "created": CREATED, "image_size": None, "disk_size": 5, "bound_to": None, "created_from": None,
     "protection": {"delete": False}, "labels": {}, "deleted": None},
    {"id": 310557660, "name": "debian-13", "description": "Debian 13", "type": "system", "status": "available",
     "os_flavor": "debian", "os_version": "13", "architecture": "x86", "rapid_deploy": True, "deprecated": None,
     "created": CREATED, "image_size": None, "disk_size": 5, "bound_to": None, "created_from": None,
     "protection": {"delete": False}, "labels": {}, "deleted": None},
]
LB_TYPES = [{"id": 1, "name": "lb11", "description": "LB11", "max_connections": 10000, "max_services": 5,
             "max_targets": 25, "max_assigned_certificates": 10, "deprecated": None, "prices": []}]


def _datacenter(location):
    return {"id": location["id"], "name": location["name"] + "-dc14", "description": location["description"],
            "location": location,
            "server_types": {"supported": [t["id"] for t in SERVER_TYPES], "available": [t["id"] for t in SERVER_TYPES],
                             "available_for_migration": [t["id"] for t in SERVER_TYPES]}}


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _match_labels(labels, selector):
    """Hetzner's label selector: comma-separated ``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = re.split("==?", term, maxsplit=1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class Cloud:
    """The stand-in's state: resources by collection, actions, and the request log."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ids = itertools.count(1000)
        self.ipv4 = itertools.count(10)
        self.data = {name: {} for name in ("servers", "ssh_keys", "firewalls", "networks", "placement_groups",
                                           "floating_ips", "load_balancers", "primary_ips", "zones")}
        self.rrsets = {}
        self.actions = {}
        self.log = []
        self.data["zones"][1] = {"id": 1, "name": "example.com", "created": CREATED, "mode": "primary", "ttl": 3600,
                                 "labels": {}, "protection": {"delete": False}, "status": "ok", "record_count": 0,
                                 "registrar": "hetzner", "primary_nameservers": [],
                                 "authoritative_nameservers": {"assigned": [], "delegated": [],
                                                               "delegation_last_check": None,
                                                               "delegation_status": "unknown"}}

    # -- helpers ---------------------------------------------------------------------------------
    def action(self, command, resources):
        action_id = next(self.ids)
        self.actions[action_id] = {"id": action_id, "command": command, "status": "success", "progress": 100,
                                   "started": CREATED, "finished": CREATED, "error": None,
                                   "resources": [{"id": rid, "type": rtype} for rtype, rid in resources]}
        return self.actions[action_id]

    def find(self, collection, ident):
        items = self.data[collection]
        if str(ident).isdigit() and int(ident) in items:
            return items[int(ident)]
        for item in items.values():
            if item.get("name") == ident:
                return item
        raise ApiError(404, "not_found", "%s with ID %s not found" % (SINGULAR[collection], ident))

    def by_name(self, collection, ident):
        static = {"server_types": SERVER_TYPES, "locations": LOCATIONS, "images": IMAGES,
                  "load_balancer_types": LB_TYPES, "datacenters": [_datacenter(loc) for loc in LOCATIONS]}
        if collection in static:
            for item in static[collection]:
                if ident in (item["id"], item["name"], str(item["id"])):
                    return item
            raise ApiError(404, "not_found", "%s %s not found" % (SINGULAR[collection], ident))
        return self.find(collection, ident)

    def unique_name(self, collection, name):
        if any(item.get("name") == name for item in self.data[collection].values()):
            raise ApiError(409, "uniqueness_error", "name is already used")

    def list(self, collection, query):
        static = {"server_types": SERVER_TYPES, "locations": LOCATIONS, "images": IMAGES,
                  "load_balancer_types": LB_TYPES, "datacenters": [_datacenter(loc) for loc in LOCATIONS]}
        items = static.get(collection)
        if items is None:
            items = list(self.data[collection].values())
        if "name" in query:
            items = [i for i in items if i.get("name") == query["name"][0]]
        if "architecture" in query:
            items = [i for i in items if i.get("architecture") == query["architecture"][0]]
        if "label_selector" in query:
            items = [i for i in items if _match_labels(i.get("labels") or {}, query["label_selector"][0])]
        if "type" in query and collection == "images":
            items = [i for i in items if i.get("type") == query["type"][0]]
        return items

    # -- resources -------------------------------------------------------------------------------
    def create(self, collection, body):
        if collection not in self.data:
            raise ApiError(405, "method_not_allowed", "cannot create %s" % collection)
        name = body.get("name")
        if not name:
            raise ApiError(400, "invalid_input", "name is required")
        self.unique_name(collection, name)
        rid = next(self.ids)
        base = {"id": rid, "name": name, "labels": body.get("labels") or {}, "created": CREATED}
        result = {}
        if collection == "ssh_keys":
            blob = base64.b64decode(body["public_key"].split()[1])
            digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - the fingerprint format Hetzner reports
            base.update(public_key=body["public_key"],
                        fingerprint=":".join(digest[i:i + 2] for i in range(0, len(digest), 2)))
            result = {"ssh_key": base}
        elif collection == "placement_groups":
            base.update(type=body.get("type", "spread"), servers=[])
            result = {"placement_group": base, "action": None}
        elif collection == "networks":
            base.update(ip_range=body["ip_range"], subnets=[], routes=[], servers=[], load_balancers=[],
                        protection={"delete": False}, expose_routes_to_vswitch=False)
            result = {"network": base}
        elif collection == "firewalls":
            base.update(rules=copy.deepcopy(body.get("rules") or []), applied_to=[])
            for rule in base["rules"]:
                rule.setdefault("destination_ips", [])
                rule.setdefault("source_ips", [])
                rule.setdefault("port", None)
                rule.setdefault("description", None)
            result = {"firewall": base, "actions": []}
        elif collection == "floating_ips":
            location = self.by_name("locations", body.get("home_location") or "fsn1")
            base.update(description=body.get("description"), type=body.get("type", "ipv4"),
                        ip="198.51.100.%d" % next(self.ipv4), server=None, dns_ptr=[], home_location=location,
                        blocked=False, protection={"delete": False})
            base["dns_ptr"] = [{"ip": base["ip"], "dns_ptr": "static.%s.clients.your-server.de" % base["ip"]}]
            result = {"floating_ip": base, "action": None}
        elif collection == "load_balancers":
            location = self.by_name("locations", body.get("location") or "fsn1")
            n = next(self.ipv4)
            base.update(load_balancer_type=self.by_name("load_balancer_types", body["load_balancer_type"]),
                        location=location, algorithm=body.get("algorithm") or {"type": "round_robin"},
                        public_net={"enabled": True, "ipv4": {"ip": "203.0.113.%d" % n, "dns_ptr": None},
                                    "ipv6": {"ip": "2001:db8:ffff::%x" % n, "dns_ptr": None}},
                        private_net=[], services=[], targets=[], protection={"delete": False},
                        outgoing_traffic=None, ingoing_traffic=None, included_traffic=0)
            result = {"load_balancer": base, "action": self.action("create_load_balancer", [("load_balancer", rid)])}
        elif collection == "servers":
            result = self.create_server(base, body)
        self.data[collection][rid] = base
        return 201, result

    def create_server(self, base, body):
        rid = base["id"]
        server_type = self.by_name("server_types", body["server_type"])
        image = self.by_name("images", body["image"])
        location = self.by_name("locations", body.get("location") or "fsn1")
        n = next(self.ipv4)
        v4 = "203.0.113.%d" % n
        base.update(
            status="running", server_type=server_type, image=image, datacenter=_datacenter(location),
            public_net={"ipv4": {"id": rid * 10 + 4, "ip": v4, "blocked": False,
                                 "dns_ptr": "static.%s.clients.your-server.de" % v4},
                        "ipv6": {"id": rid * 10 + 6, "ip": "2001:db8:%x::/64" % n, "blocked": False, "dns_ptr": []},
                        "floating_ips": [], "firewalls": []},
            private_net=[], placement_group=None, rescue_enabled=False, locked=False, backup_window=None,
            outgoing_traffic=0, ingoing_traffic=0, included_traffic=0, protection={"delete": False, "rebuild": False},
            volumes=[], load_balancers=[], primary_disk_size=server_type["disk"], iso=None,
            user_data=body.get("user_data"), ssh_keys=[self.find("ssh_keys", k)["id"] for k in body.get("ssh_keys") or []])
        for fw in body.get("firewalls") or []:
            firewall = self.find("firewalls", fw["firewall"])
            self.apply_firewall(firewall, base)
        if body.get("placement_group"):
            group = self.find("placement_groups", body["placement_group"])
            base["placement_group"] = group
            group["servers"].append(rid)
        for net in body.get("networks") or []:
            self.attach(base, self.find("networks", net), None)
        return {"server": base, "root_password": None, "action": self.action("create_server", [("server", rid)]),
                "next_actions": [self.action("start_server", [("server", rid)])]}

    def apply_firewall(self, firewall, server):
        if any(f["id"] == firewall["id"] for f in server["public_net"]["firewalls"]):
            return
        server["public_net"]["firewalls"].append({"id": firewall["id"], "status": "applied"})
        firewall["applied_to"].append({"type": "server", "server": {"id": server["id"]}})

    def attach(self, server, network, ip):
        if not network["subnets"]:
            raise ApiError(422, "invalid_input", "network has no subnet")
        subnet = network["subnets"][0]["ip_range"]
        prefix = subnet.rsplit(".", 1)[0]
        ip = ip or "%s.%d" % (prefix, 2 + len(network["servers"]))
        server["private_net"].append({"network": network["id"], "ip": ip, "alias_ips": [], "mac_address": "86:00:00:00:00:01"})
        network["servers"].append(server["id"])

    def delete(self, collection, rid):
        item = self.find(collection, rid)
        if collection == "servers":
            if item["protection"]["delete"]:
                raise ApiError(423, "protected", "server is delete protected")
            for firewall in self.data["firewalls"].values():
                firewall["applied_to"] = [a for a in firewall["applied_to"] if a.get("server", {}).get("id") != item["id"]]
            for fip in self.data["floating_ips"].values():
                if fip["server"] == item["id"]:
                    fip["server"] = None
            for network in self.data["networks"].values():
                network["servers"] = [s for s in network["servers"] if s != item["id"]]
            if item["placement_group"]:
                group = self.data["placement_groups"].get(item["placement_group"]["id"])
                if group:
                    group["servers"] = [s for s in group["servers"] if s != item["id"]]
        if collection == "firewalls" and item["applied_to"]:
            raise ApiError(422, "resource_in_use", "firewall is still in use")
        del self.data[collection][item["id"]]
        if collection == "servers":
            return 200, {"action": self.action("delete_server", [("server", item["id"])])}
        return 204, None

    def update(self, collection, rid, body):
        item = self.find(collection, rid)
        for key in ("name", "labels", "description"):
            if key in body:
                item[key] = body[key]
        return 200, {SINGULAR[collection]: item}

    def run_action(self, collection, rid, command, body):
        item = self.find(collection, rid)
        ref = (SINGULAR[collection], item["id"])
        if collection == "firewalls" and command == "set_rules":
            item["rules"] = copy.deepcopy(body["rules"])
            for rule in item["rules"]:
                rule.setdefault("destination_ips", [])
                rule.setdefault("source_ips", [])
                rule.setdefault("port", None)
                rule.setdefault("description", None)
            return {"actions": [self.action("set_firewall_rules", [ref])]}
        if collection == "firewalls" and command == "apply_to_resources":
            for resource in body["apply_to"]:
                self.apply_firewall(item, self.find("servers", resource["server"]["id"]))
            return {"actions": [self.action("apply_firewall", [ref])]}
        if collection == "firewalls" and command == "remove_from_resources":
            for resource in body["remove_from"]:
                server = self.find("servers", resource["server"]["id"])
                server["public_net"]["firewalls"] = [f for f in server["public_net"]["firewalls"] if f["id"] != item["id"]]
                item["applied_to"] = [a for a in item["applied_to"] if a.get("server", {}).get("id") != server["id"]]
            return {"actions": [self.action("remove_firewall", [ref])]}
        if collection == "networks" and command == "add_subnet":
            item["subnets"].append({"type": body["type"], "ip_range": body.get("ip_range"),
                                    "network_zone": body["network_zone"], "gateway": "10.0.0.1",
                                    "vswitch_id": body.get("vswitch_id")})
            return {"action": self.action("add_subnet", [ref])}
        if collection == "servers" and command == "attach_to_network":
            self.attach(item, self.find("networks", body["network"]), body.get("ip"))
            return {"action": self.action("attach_to_network", [ref])}
        if collection == "servers" and command == "change_dns_ptr":
            if body["ip"] == item["public_net"]["ipv4"]["ip"]:
                item["public_net"]["ipv4"]["dns_ptr"] = body["dns_ptr"]
            else:
                ptrs = [p for p in item["public_net"]["ipv6"]["dns_ptr"] if p["ip"] != body["ip"]]
                if body["dns_ptr"]:
                    ptrs.append({"ip": body["ip"], "dns_ptr": body["dns_ptr"]})
                item["public_net"]["ipv6"]["dns_ptr"] = ptrs
            return {"action": self.action("change_dns_ptr", [ref])}
        if collection == "floating_ips" and command == "change_dns_ptr":
            item["dns_ptr"] = [{"ip": body["ip"], "dns_ptr": body["dns_ptr"]}]
            return {"action": self.action("change_dns_ptr", [ref])}
        if collection == "floating_ips" and command == "unassign":
            server = self.data["servers"].get(item["server"])
            if server:
                server["public_net"]["floating_ips"].remove(item["id"])
            item["server"] = None
            return {"action": self.action("unassign_floating_ip", [ref])}
        if collection == "floating_ips" and command == "assign":
            server = self.find("servers", body["server"])
            item["server"] = server["id"]
            if item["id"] not in server["public_net"]["floating_ips"]:
                server["public_net"]["floating_ips"].append(item["id"])
            return {"action": self.action("assign_floating_ip", [ref])}
        if command == "change_protection":
            item.setdefault("protection", {}).update({k: v for k, v in body.items() if v is not None})
            return {"action": self.action("change_protection", [ref])}
        if collection == "servers" and command in ("poweron", "poweroff"):
            item["status"] = "running" if command == "poweron" else "off"
            return {"action": self.action(command, [ref])}
        if collection == "load_balancers" and command == "add_service":
            service = {"protocol": body["protocol"], "listen_port": body["listen_port"],
                       "destination_port": body["destination_port"], "proxyprotocol": body.get("proxyprotocol", False),
                       "health_check": body.get("health_check") or {"protocol": "tcp", "port": body["destination_port"],
                                                                    "interval": 15, "timeout": 10, "retries": 3,
                                                                    "http": None},
                       "http": body.get("http")}
            item["services"].append(service)
            return {"action": self.action("add_service", [ref])}
        if collection == "load_balancers" and command == "add_target":
            target = {"type": body["type"], "use_private_ip": body.get("use_private_ip", False)}
            if body["type"] == "label_selector":
                target["label_selector"] = body["label_selector"]
                target["targets"] = []
            elif body["type"] == "server":
                target["server"] = body["server"]
            item["targets"].append(target)
            return {"action": self.action("add_target", [ref])}
        raise ApiError(400, "invalid_input", "the stand-in has no %s action for %s" % (command, collection))

    # -- zones (Hetzner DNS in the Cloud API) ------------------------------------------------------
    def rrset(self, zone, name, rtype):
        key = (zone["id"], name, rtype)
        if key not in self.rrsets:
            raise ApiError(404, "not_found", "rrset not found")
        return self.rrsets[key]

    def zone_request(self, method, parts, body, query):
        zone = self.find("zones", parts[1])
        if len(parts) == 3 and parts[2] == "rrsets":
            if method == "GET":
                items = [r for r in self.rrsets.values() if r["zone"] == zone["id"]]
                if "label_selector" in query:
                    items = [r for r in items if _match_labels(r["labels"], query["label_selector"][0])]
                return 200, {"rrsets": items, "meta": _meta(len(items))}
            key = (zone["id"], body["name"], body["type"])
            if key in self.rrsets:
                raise ApiError(409, "uniqueness_error", "rrset exists")
            rrset = {"id": "%s/%s" % (body["name"], body["type"]), "name": body["name"], "type": body["type"],
                     "ttl": body.get("ttl"), "labels": body.get("labels") or {}, "protection": {"change": False},
                     "records": [{"value": r["value"], "comment": r.get("comment")} for r in body.get("records") or []],
                     "zone": zone["id"]}
            self.rrsets[key] = rrset
            return 201, {"rrset": rrset, "action": self.action("create_rrset", [("zone", zone["id"])])}
        rrset = self.rrset(zone, parts[3], parts[4])
        if len(parts) == 5 and method == "GET":
            return 200, {"rrset": rrset}
        if len(parts) == 5 and method == "DELETE":
            del self.rrsets[(zone["id"], rrset["name"], rrset["type"])]
            return 201, {"action": self.action("delete_rrset", [("zone", zone["id"])])}
        if len(parts) == 5 and method == "PUT":
            rrset["labels"] = body.get("labels", rrset["labels"])
            return 200, {"rrset": rrset}
        command = parts[6]
        if command == "set_records":
            rrset["records"] = [{"value": r["value"], "comment": r.get("comment")} for r in body["records"]]
        elif command == "change_ttl":
            rrset["ttl"] = body.get("ttl")
        else:
            raise ApiError(400, "invalid_input", "the stand-in has no rrset action %s" % command)
        return 201, {"action": self.action(command, [("zone", zone["id"])])}

    # -- dispatch --------------------------------------------------------------------------------
    def handle(self, method, path, query, body):
        parts = [p for p in path.split("/") if p][1:]  # drop "v1"
        if not parts:
            raise ApiError(404, "not_found", "no such endpoint")
        collection = parts[0]
        if collection == "actions" and len(parts) == 2:
            return 200, {"action": self._action(parts[1])}
        if len(parts) == 3 and parts[1] == "actions" and parts[2].isdigit():
            return 200, {"action": self._action(parts[2])}
        if collection == "zones" and len(parts) >= 3:
            return self.zone_request(method, parts, body, query)
        if collection not in SINGULAR:
            raise ApiError(404, "not_found", "the stand-in does not serve /%s" % collection)
        if len(parts) == 1:
            if method == "GET":
                items = self.list(collection, query)
                return 200, {collection: items, "meta": _meta(len(items))}
            if method == "POST":
                return self.create(collection, body)
        elif len(parts) == 2:
            if method == "GET":
                return 200, {SINGULAR[collection]: self.by_name(collection, parts[1])}
            if method == "PUT":
                return self.update(collection, parts[1], body)
            if method == "DELETE":
                return self.delete(collection, parts[1])
        elif len(parts) == 4 and parts[2] == "actions" and method == "POST":
            return 201, self.run_action(collection, parts[1], parts[3], body)
        raise ApiError(404, "not_found", "the stand-in has no %s %s" % (method, path))

    def _action(self, ident):
        action = self.actions.get(int(ident))
        if action is None:
            raise ApiError(404, "not_found", "action not found")
        return action

    def seed_server(self, name, labels=None):
        """A server someone else created (no labels, or other labels)."""
        if not self.data["ssh_keys"]:
            pass
        with self.lock:
            rid = next(self.ids)
            base = {"id": rid, "name": name, "labels": labels or {}, "created": CREATED}
            self.create_server(base, {"server_type": "cpx31", "image": "debian-12", "location": "fsn1"})
            self.data["servers"][rid] = base
            return base


def _meta(total):
    return {"pagination": {"page": 1, "per_page": 50, "previous_page": None, "next_page": None,
                           "last_page": 1, "total_entries": total}}


class Handler(BaseHTTPRequestHandler):
    cloud: Cloud = None  # set by serve()

    def log_message(self, fmt, *args):  # quiet
        pass

    def _reply(self, status, payload):
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        if url.path.startswith("/__standin/"):
            return self._standin(method, url.path, body)
        if self.headers.get("Authorization") != "Bearer " + self.server.token:
            return self._reply(401, {"error": {"code": "unauthorized", "message": "unable to authenticate"}})
        with self.cloud.lock:
            self.cloud.log.append({"method": method, "path": url.path, "query": url.query, "body": body})
            try:
                status, payload = self.cloud.handle(method, url.path, query, body)
            except ApiError as err:
                status, payload = err.status, {"error": {"code": err.code, "message": err.message, "details": {}}}
            except (KeyError, TypeError, ValueError) as err:
                status, payload = 400, {"error": {"code": "invalid_input", "message": "stand-in: %r" % (err,), "details": {}}}
            payload = copy.deepcopy(payload)
        return self._reply(status, payload)

    def _standin(self, method, path, body):
        if path == "/__standin/state":
            with self.cloud.lock:
                return self._reply(200, {k: list(v.values()) for k, v in self.cloud.data.items()}
                                   | {"rrsets": list(self.cloud.rrsets.values())})
        if path == "/__standin/log":
            with self.cloud.lock:
                return self._reply(200, {"log": self.cloud.log})
        if path == "/__standin/seed" and method == "POST":
            return self._reply(201, {"server": self.cloud.seed_server(body["name"], body.get("labels"))})
        return self._reply(404, {"error": {"code": "not_found", "message": path}})

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")


def serve(token, host="127.0.0.1", port=0):
    """Start the stand-in on loopback in a thread; returns (server, endpoint URL, cloud state)."""
    cloud = Cloud()
    handler = type("BoundHandler", (Handler,), {"cloud": cloud})
    server = ThreadingHTTPServer((host, port), handler)
    server.token = token
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, "http://%s:%d/v1" % (host, server.server_address[1]), cloud


if __name__ == "__main__":
    import sys

    srv, endpoint, dummy = serve(sys.argv[1] if len(sys.argv) > 1 else "standin-token",
                                 port=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(endpoint, flush=True)
    threading.Event().wait()
