"""Mocks that answer as AWS would (components.review.evaluation runs the program under them).

Product code, not only test code: `bin/mzk render` and `bin/mzk diff` run the program under
these mocks to show a stack without credentials, and the tests (tests/program) use the same
copy. Every generated value (IDs, addresses, host keys) is drawn from a generator seeded by
the resource's type and name, so two evaluations of the same program give the same values
and a render changes only where the program changed.

The mocks hand out IDs and ARNs in AWS's formats, addresses inside the subnet a host was
placed in, the subnet's zone, and load balancer DNS names; they also refuse what AWS refuses
(a subnet outside its VPC or overlapping another, a zone not in the region, a volume attached
across zones, a load balancer with two subnets in one zone, a DNS routing policy or health
check AWS does not take, a record outside its hosted zone or a second value on a CNAME).
Route 53 hosted zones get `Z...` IDs and records the `<zone>_<name>_<type>` ID and `fqdn`
the provider reports.
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components.review.mock_host_keys import _host_key
from components.review.secret_inputs import _shown, _unwrap

ACCOUNT = "123456789012"


def _rng(typ: str, name: str) -> random.Random:
    """The generator of one resource's values: the same type and name, the same values."""
    return random.Random(f"{typ}|{name}")  # noqa: S311 (stand-in IDs, not secrets)


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _public_ip(rng: random.Random, first: str) -> str:
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(254) + 1}"



class AWSError(Exception):
    """What the AWS API would have answered instead of creating the resource."""


@dataclass
class Registered:
    typ: str
    name: str
    id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    protect: bool = False
    secret_inputs: frozenset[str] = frozenset()
    # The inputs as a reviewer may see them: secret values (at any depth) are `Secret`s.
    shown_inputs: dict[str, Any] = field(default_factory=dict)

    def out(self, key: str, default: Any = None) -> Any:
        return self.outputs.get(key, default)


@dataclass
class AwsMocks(pulumi.runtime.Mocks):
    region: str = "eu-west-1"
    zone_letters: str = "abc"
    resources: list[Registered] = field(default_factory=list)
    by_id: dict[str, Registered] = field(default_factory=dict)
    _used: dict[str, set[str]] = field(default_factory=dict)

    @property
    def zones(self) -> list[str]:
        return [f"{self.region}{c}" for c in self.zone_letters]

    # ------------------------------------------------------------------ invokes
    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":  # noqa: S105
            ids = [f"euw1-az{i + 1}" for i in range(len(self.zones))]
            return {"names": self.zones, "zoneIds": ids, "id": self.region,
                    "groupNames": [self.region]}, []
        raise AWSError(f"unexpected invoke {args.token}")

    # ------------------------------------------------------------------ resources
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = _unwrap(dict(args.inputs))
        rng = _rng(args.typ, args.name)
        handler = _HANDLERS.get(args.typ)
        if handler is None and args.typ.endswith(":HostKey"):
            rid, outs = _host_key(rng, inputs["host"])
            outputs = {**inputs, **outs}
            outputs.pop("__provider", None)
        elif handler is None:
            rid, outputs = f"{args.name}-{_hex(rng, 8)}", inputs
        else:
            rid, extra = handler(self, args.name, inputs, rng)
            outputs = {**inputs, **extra}
        reg = Registered(args.typ, args.name, rid, inputs, outputs,
                         shown_inputs=_shown(dict(args.inputs)))
        self.resources.append(reg)
        self.by_id[rid] = reg
        for key in ("arn",):
            if key in outputs:
                self.by_id[outputs[key]] = reg
        return rid, outputs

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{ACCOUNT}:{resource}"

    def _autoname(self, name: str, inputs: dict, rng: random.Random, limit: int = 255) -> str:
        given = inputs.get("name")
        chosen = given or f"{name}-{_hex(rng, 7)}"
        if len(chosen) > limit:
            raise AWSError(f"ValidationError: name {chosen!r} is longer than {limit} characters")
        return chosen

    def _lookup(self, rid: Any, typ: str) -> Registered:
        reg = self.by_id.get(rid)
        if reg is None or reg.typ != typ:
            raise AWSError(f"InvalidID: {rid!r} is not a known {typ}")
        return reg

    def _allocate(self, subnet: Registered, rng: random.Random) -> str:
        net = ipaddress.ip_network(subnet.inputs["cidrBlock"])
        used = self._used.setdefault(subnet.id, set())
        hosts = list(net.hosts())[3:]  # AWS keeps .1-.3; .0 and broadcast are not hosts
        free = [str(ip) for ip in hosts if str(ip) not in used]
        choice = free[rng.randrange(min(len(free), 200))]
        used.add(choice)
        return choice

    def vpc(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        rid = f"vpc-{_hex(rng, 17)}"
        return rid, {"arn": self._arn("ec2", f"vpc/{rid}"), "ownerId": ACCOUNT,
                     "defaultSecurityGroupId": f"sg-{_hex(rng, 17)}",
                     "mainRouteTableId": f"rtb-{_hex(rng, 17)}"}

    def subnet(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        vpc = self._lookup(inputs.get("vpcId"), "aws:ec2/vpc:Vpc")
        cidr = ipaddress.ip_network(inputs["cidrBlock"])
        if not cidr.subnet_of(ipaddress.ip_network(vpc.inputs["cidrBlock"])):  # type: ignore[arg-type]
            raise AWSError(f"InvalidSubnet.Range: The CIDR '{cidr}' is invalid.")
        for other in self.of_type("aws:ec2/subnet:Subnet"):
            if other.inputs["vpcId"] == vpc.id and \
                    cidr.overlaps(ipaddress.ip_network(other.inputs["cidrBlock"])):
                raise AWSError(f"InvalidSubnet.Conflict: The CIDR '{cidr}' conflicts with "
                               "another subnet")
        zone = inputs.get("availabilityZone")
        if zone not in self.zones:
            raise AWSError(f"InvalidParameterValue: Value ({zone}) for parameter "
                           "availabilityZone is invalid.")
        rid = f"subnet-{_hex(rng, 17)}"
        return rid, {"arn": self._arn("ec2", f"subnet/{rid}"), "ownerId": ACCOUNT,
                     "availabilityZone": zone,
                     "availabilityZoneId": f"euw1-az{self.zones.index(zone) + 1}"}

    def instance(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        subnet = self._lookup(inputs.get("subnetId"), "aws:ec2/subnet:Subnet")
        ip = self._allocate(subnet, rng)
        rid = f"i-{_hex(rng, 17)}"
        out = {"arn": self._arn("ec2", f"instance/{rid}"), "privateIp": ip,
               "availabilityZone": subnet.outputs["availabilityZone"],
               "privateDns": f"ip-{ip.replace('.', '-')}.{self.region}.compute.internal",
               "primaryNetworkInterfaceId": f"eni-{_hex(rng, 17)}", "instanceState": "running"}
        if inputs.get("associatePublicIpAddress"):
            out["publicIp"] = _public_ip(rng, "52")
        return rid, out

    def volume(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        if inputs.get("availabilityZone") not in self.zones:
            raise AWSError("InvalidParameterValue: invalid availability zone")
        rid = f"vol-{_hex(rng, 17)}"
        return rid, {"arn": self._arn("ec2", f"volume/{rid}")}

    def volume_attachment(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        volume = self._lookup(inputs.get("volumeId"), "aws:ebs/volume:Volume")
        instance = self._lookup(inputs.get("instanceId"), "aws:ec2/instance:Instance")
        if volume.inputs["availabilityZone"] != instance.outputs["availabilityZone"]:
            raise AWSError("InvalidVolume.ZoneMismatch: the volume is not in the same "
                           "availability zone as the instance")
        return f"vai-{_hex(rng, 10)}", {}

    def load_balancer(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        lb_name = self._autoname(name, inputs, rng, 32)
        subnets = [self._lookup(s, "aws:ec2/subnet:Subnet") for s in inputs.get("subnets", [])]
        zones = [s.outputs["availabilityZone"] for s in subnets]
        if not zones or len(set(zones)) != len(zones):
            raise AWSError("InvalidConfigurationRequest: at most one subnet per zone")
        if len({s.inputs["vpcId"] for s in subnets}) != 1:
            raise AWSError("InvalidConfigurationRequest: subnets must be in one VPC")
        policy = inputs.get("dnsRecordClientRoutingPolicy")
        if policy is not None and policy not in CLIENT_ROUTING_POLICIES:
            raise AWSError(f"ValidationError: dns_record.client_routing_policy {policy!r} "
                           f"must be one of {', '.join(CLIENT_ROUTING_POLICIES)}")
        if policy is not None and inputs.get("loadBalancerType") != "network":
            raise AWSError("InvalidConfigurationRequest: dns_record.client_routing_policy "
                           "is only valid for network load balancers")
        for sg in inputs.get("securityGroups", []):
            self._lookup(sg, "aws:ec2/securityGroup:SecurityGroup")
        arn = self._arn("elasticloadbalancing", f"loadbalancer/net/{lb_name}/{_hex(rng, 16)}")
        return arn, {"arn": arn, "name": lb_name, "zoneId": "Z2IFOLAFXWLO4F",
                     "dnsName": f"{lb_name}-{_hex(rng, 16)}.elb.{self.region}.amazonaws.com",
                     "vpcId": subnets[0].inputs["vpcId"], "arnSuffix": arn.split(":")[-1]}

    def target_group(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        tg_name = self._autoname(name, inputs, rng, 32)
        self._lookup(inputs.get("vpcId"), "aws:ec2/vpc:Vpc")
        hc = inputs.get("healthCheck", {})
        protocol = hc.get("protocol", "HTTP")
        if protocol not in ("TCP", "HTTP", "HTTPS"):
            raise AWSError(f"ValidationError: health check protocol {protocol!r} is not one "
                           "of TCP, HTTP, HTTPS")
        if protocol == "TCP" and (hc.get("path") or hc.get("matcher")):
            raise AWSError("InvalidConfigurationRequest: a TCP health check takes no path "
                           "and no matcher")
        if protocol != "TCP" and not str(hc.get("path", "/")).startswith("/"):
            raise AWSError("ValidationError: health check path must begin with '/'")
        if "interval" in hc and not 5 <= int(hc["interval"]) <= 300:
            raise AWSError("ValidationError: health check interval must be 5-300 seconds")
        if "timeout" in hc and int(hc["timeout"]) > int(hc.get("interval", 30)):
            raise AWSError("ValidationError: health check timeout must not exceed the interval")
        for key in ("healthyThreshold", "unhealthyThreshold"):
            if key in hc and not 2 <= int(hc[key]) <= 10:
                raise AWSError(f"ValidationError: health check {key} must be 2-10")
        cross = inputs.get("loadBalancingCrossZoneEnabled", "use_load_balancer_configuration")
        if cross not in ("true", "false", "use_load_balancer_configuration"):
            raise AWSError(f"ValidationError: load_balancing.cross_zone.enabled {cross!r}")
        failover = inputs.get("targetGroupHealth", {}).get("dnsFailover", {})
        for key in ("minimumHealthyTargetsCount", "minimumHealthyTargetsPercentage"):
            value = str(failover.get(key, "off"))
            if value != "off" and not (value.isdigit() and int(value) >= 1):
                raise AWSError(f"ValidationError: target_group_health.dns_failover {key} "
                               f"{value!r} must be 'off' or a whole number from 1")
        arn = self._arn("elasticloadbalancing", f"targetgroup/{tg_name}/{_hex(rng, 16)}")
        return arn, {"arn": arn, "name": tg_name}

    def attachment(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        self._lookup(inputs.get("targetGroupArn"), "aws:lb/targetGroup:TargetGroup")
        self._lookup(inputs.get("targetId"), "aws:ec2/instance:Instance")
        return f"{inputs['targetGroupArn']}-{_hex(rng, 20)}", {}

    def listener(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        lb = self._lookup(inputs.get("loadBalancerArn"), "aws:lb/loadBalancer:LoadBalancer")
        for action in inputs.get("defaultActions", []):
            self._lookup(action.get("targetGroupArn"), "aws:lb/targetGroup:TargetGroup")
        arn = lb.id.replace(":loadbalancer/", ":listener/") + f"/{_hex(rng, 16)}"
        return arn, {"arn": arn}

    def hosted_zone(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        domain = str(inputs.get("name", "")).rstrip(".").lower()
        if not _dns_name(domain):
            raise AWSError(f"InvalidDomainName: {inputs.get('name')!r} is not a domain name")
        for vpc in inputs.get("vpcs", []):
            self._lookup(vpc.get("vpcId"), "aws:ec2/vpc:Vpc")
            if vpc.get("vpcRegion", self.region) != self.region:
                raise AWSError("InvalidVPCId: the VPC is not in region "
                               f"{vpc.get('vpcRegion')}")
        for other in self.of_type("aws:route53/zone:Zone"):
            shared = {v["vpcId"] for v in other.inputs.get("vpcs", [])} & \
                {v["vpcId"] for v in inputs.get("vpcs", [])}
            if other.outputs["name"] == domain and shared:
                raise AWSError(f"ConflictingDomainExists: {domain} is already associated "
                               "with the VPC")
        zone_id = "Z" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                                for _ in range(20))
        servers = [f"ns-{rng.randrange(2048)}.awsdns-{i:02d}.{tld}"
                   for i, tld in enumerate(("com", "net", "org", "co.uk"))]
        return zone_id, {"zoneId": zone_id, "name": domain, "nameServers": servers,
                         "primaryNameServer": servers[0],
                         "arn": f"arn:aws:route53:::hostedzone/{zone_id}"}

    def record(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        zone = self._lookup(inputs.get("zoneId"), "aws:route53/zone:Zone")
        domain = zone.outputs["name"]
        given = str(inputs.get("name", "")).rstrip(".").lower()
        fqdn = given if given == domain or given.endswith("." + domain) \
            else f"{given}.{domain}"
        if not _dns_name(fqdn):
            raise AWSError(f"InvalidChangeBatch: {given!r} is not a DNS name")
        typ = inputs.get("type")
        values = inputs.get("records", [])
        if bool(values) == bool(inputs.get("aliases")):
            raise AWSError("InvalidChangeBatch: give either records (with a TTL) or an alias")
        if values and "ttl" not in inputs:
            raise AWSError("InvalidChangeBatch: a record with values needs a TTL")
        if typ == "CNAME":
            if fqdn == domain:
                raise AWSError(f"InvalidChangeBatch: RRSet of type CNAME with DNS name "
                               f"{fqdn}. is not permitted at apex in zone {domain}.")
            if len(values) > 1:
                raise AWSError("InvalidChangeBatch: a CNAME record holds one value")
            if not all(_dns_name(str(v).rstrip(".").lower()) for v in values):
                raise AWSError("InvalidChangeBatch: a CNAME value must be a DNS name")
        for other in self.of_type("aws:route53/record:Record"):
            if (other.inputs["zoneId"], other.outputs["fqdn"]) == (zone.id, fqdn) and \
                    (typ == "CNAME" or other.inputs["type"] == "CNAME"):
                raise AWSError(f"InvalidChangeBatch: RRSet of type {typ} with DNS name "
                               f"{fqdn}. is not permitted because a conflicting RRSet "
                               "exists")
        return f"{zone.id}_{fqdn}_{typ}", {"fqdn": fqdn}

    def autoscaling_group(self, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        group = self._autoname(name, inputs, rng)
        for sn in inputs.get("vpcZoneIdentifiers", []):
            self._lookup(sn, "aws:ec2/subnet:Subnet")
        self._lookup(inputs.get("launchTemplate", {}).get("id"),
                     "aws:ec2/launchTemplate:LaunchTemplate")
        if not inputs["minSize"] <= inputs["desiredCapacity"] <= inputs["maxSize"]:
            raise AWSError("ValidationError: desired capacity must be within min and max")
        return group, {"name": group, "arn": self._arn(
            "autoscaling", f"autoScalingGroup:{_hex(rng, 36)}:autoScalingGroupName/{group}")}

    def iam(self, kind: str) -> Any:
        def make(mocks: AwsMocks, name: str, inputs: dict,
                 rng: random.Random) -> tuple[str, dict]:
            chosen = mocks._autoname(name, inputs, rng, 64)
            arn = f"arn:aws:iam::{ACCOUNT}:{kind}/{chosen}"
            return chosen, {"name": chosen, "arn": arn, "uniqueId": f"AROA{_hex(rng, 17).upper()}"}
        return make


CLIENT_ROUTING_POLICIES = ("any_availability_zone", "availability_zone_affinity",
                           "partial_availability_zone_affinity")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _dns_name(name: str) -> bool:
    """A lower-case DNS name of two or more RFC 1123 labels, at most 253 characters."""
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(x) for x in labels)


def _simple(prefix: str, service: str = "ec2", kind: str = "") -> Any:
    def make(mocks: AwsMocks, name: str, inputs: dict, rng: random.Random) -> tuple[str, dict]:
        rid = f"{prefix}-{_hex(rng, 17)}"
        out: dict[str, Any] = {"arn": mocks._arn(service, f"{kind or prefix}/{rid}")}
        if prefix == "eipalloc":
            out.update(allocationId=rid, publicIp=_public_ip(rng, "34"))
        if prefix == "lt":
            out.update(latestVersion=1, defaultVersion=1)
        if prefix == "sgr":
            out.update(securityGroupRuleId=rid)
        return rid, out
    return make


_HANDLERS = {
    "aws:ec2/vpc:Vpc": AwsMocks.vpc,
    "aws:ec2/subnet:Subnet": AwsMocks.subnet,
    "aws:ec2/instance:Instance": AwsMocks.instance,
    "aws:ebs/volume:Volume": AwsMocks.volume,
    "aws:ec2/volumeAttachment:VolumeAttachment": AwsMocks.volume_attachment,
    "aws:lb/loadBalancer:LoadBalancer": AwsMocks.load_balancer,
    "aws:lb/targetGroup:TargetGroup": AwsMocks.target_group,
    "aws:lb/targetGroupAttachment:TargetGroupAttachment": AwsMocks.attachment,
    "aws:lb/listener:Listener": AwsMocks.listener,
    "aws:route53/zone:Zone": AwsMocks.hosted_zone,
    "aws:route53/record:Record": AwsMocks.record,
    "aws:autoscaling/group:Group": AwsMocks.autoscaling_group,
    "aws:iam/role:Role": AwsMocks.iam(None, "role"),  # type: ignore[arg-type]
    "aws:iam/instanceProfile:InstanceProfile": AwsMocks.iam(None, "instance-profile"),  # type: ignore[arg-type]
    "aws:ec2/internetGateway:InternetGateway": _simple("igw", kind="internet-gateway"),
    "aws:ec2/routeTable:RouteTable": _simple("rtb", kind="route-table"),
    "aws:ec2/route:Route": _simple("r"),
    "aws:ec2/routeTableAssociation:RouteTableAssociation": _simple("rtbassoc"),
    "aws:ec2/eip:Eip": _simple("eipalloc", kind="elastic-ip"),
    "aws:ec2/natGateway:NatGateway": _simple("nat", kind="natgateway"),
    "aws:ec2/securityGroup:SecurityGroup": _simple("sg", kind="security-group"),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        _simple("sgr", kind="security-group-rule"),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule":
        _simple("sgr", kind="security-group-rule"),
    "aws:ec2/launchTemplate:LaunchTemplate": _simple("lt", kind="launch-template"),
    "aws:iam/rolePolicy:RolePolicy": _simple("policy", "iam"),
}
