"""Replay what the program declared into moto, a model of the AWS APIs.

The same inputs the mocks recorded are sent, in declaration order, as the boto3 calls the
AWS provider makes; mock IDs are mapped to the IDs moto hands out. moto refuses what AWS
refuses where it models it (subnets outside their VPC or overlapping, unknown zones, unknown
references, a group with min > desired, a record outside its hosted zone). A record naming
a load balancer by its DNS name is replayed with the name moto gave that balancer. The AMI
is the one thing not replayed as declared: moto only knows its own catalogue, so its first
Amazon-owned image stands in.
"""

from __future__ import annotations

import base64
from typing import Any

import boto3

from tests.program.mocks import Evaluation, Registered


def _tags(tags: dict[str, str], kind: str) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]



# The program's metadata options as EC2 names them: replayed as given, not assumed.
_METADATA_NAMES = {"httpTokens": "HttpTokens", "httpEndpoint": "HttpEndpoint",
                   "httpPutResponseHopLimit": "HttpPutResponseHopLimit",
                   "instanceMetadataTags": "InstanceMetadataTags"}


def _metadata_options(inputs: dict) -> dict:
    given = inputs.get("metadataOptions") or {}
    unknown = set(given) - set(_METADATA_NAMES)
    if unknown:
        raise AssertionError(f"metadata options not replayed: {sorted(unknown)}")
    return {_METADATA_NAMES[k]: int(v) if k == "httpPutResponseHopLimit" else v
            for k, v in given.items()}

class Replay:
    """boto3 clients against moto and the mapping of mock IDs to moto IDs."""

    def __init__(self, ev: Evaluation, region: str = "eu-west-1") -> None:
        self.ev = ev
        self.ec2 = boto3.client("ec2", region_name=region)
        self.elbv2 = boto3.client("elbv2", region_name=region)
        self.asg = boto3.client("autoscaling", region_name=region)
        self.route53 = boto3.client("route53", region_name=region)
        self.region = region
        self.ids: dict[str, str] = {}
        self.image = self.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        self.skipped: list[str] = []

    def m(self, mock_id: str) -> str:
        return self.ids[mock_id]

    def run(self) -> Replay:
        for reg in self.ev.resources:
            method = getattr(self, "_" + reg.typ.split(":")[-1], None)
            if method is None:
                self.skipped.append(reg.typ)
                continue
            moto_id = method(reg, reg.inputs)
            if moto_id:
                self.ids[reg.id] = moto_id
                if "arn" in reg.outputs:
                    self.ids[reg.outputs["arn"]] = moto_id
        return self

    # ------------------------------------------------------------------ EC2
    def _Vpc(self, reg: Registered, i: dict) -> str:  # noqa: N802
        return self.ec2.create_vpc(CidrBlock=i["cidrBlock"], TagSpecifications=_tags(
            i["tags"], "vpc"))["Vpc"]["VpcId"]

    def _Subnet(self, reg: Registered, i: dict) -> str:  # noqa: N802
        return self.ec2.create_subnet(
            VpcId=self.m(i["vpcId"]), CidrBlock=i["cidrBlock"],
            AvailabilityZone=i["availabilityZone"],
            TagSpecifications=_tags(i["tags"], "subnet"))["Subnet"]["SubnetId"]

    def _InternetGateway(self, reg: Registered, i: dict) -> str:  # noqa: N802
        igw = self.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        self.ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=self.m(i["vpcId"]))
        return igw

    def _RouteTable(self, reg: Registered, i: dict) -> str:  # noqa: N802
        return self.ec2.create_route_table(VpcId=self.m(i["vpcId"]))["RouteTable"][
            "RouteTableId"]

    def _Route(self, reg: Registered, i: dict) -> None:  # noqa: N802
        target = ({"GatewayId": self.m(i["gatewayId"])} if "gatewayId" in i
                  else {"NatGatewayId": self.m(i["natGatewayId"])})
        self.ec2.create_route(RouteTableId=self.m(i["routeTableId"]),
                              DestinationCidrBlock=i["destinationCidrBlock"], **target)

    def _RouteTableAssociation(self, reg: Registered, i: dict) -> str:  # noqa: N802
        return self.ec2.associate_route_table(RouteTableId=self.m(i["routeTableId"]),
                                              SubnetId=self.m(i["subnetId"]))["AssociationId"]

    def _Eip(self, reg: Registered, i: dict) -> str:  # noqa: N802
        moto_id = self.ec2.allocate_address(Domain="vpc")["AllocationId"]
        self.ids[reg.outputs["allocationId"]] = moto_id
        return moto_id

    def _NatGateway(self, reg: Registered, i: dict) -> str:  # noqa: N802
        return self.ec2.create_nat_gateway(
            SubnetId=self.m(i["subnetId"]), AllocationId=self.m(i["allocationId"]))[
            "NatGateway"]["NatGatewayId"]

    def _SecurityGroup(self, reg: Registered, i: dict) -> str:  # noqa: N802
        sg = self.ec2.create_security_group(
            GroupName=reg.name, Description=i["description"], VpcId=self.m(i["vpcId"]))[
            "GroupId"]
        # As the provider does: a group created in a VPC loses AWS's default allow-all egress.
        self.ec2.revoke_security_group_egress(GroupId=sg, IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        return sg

    def _permission(self, i: dict) -> list[dict[str, Any]]:
        perm: dict[str, Any] = {"IpProtocol": i["ipProtocol"], "FromPort": int(i["fromPort"]),
                                "ToPort": int(i["toPort"])}
        if "cidrIpv4" in i:
            perm["IpRanges"] = [{"CidrIp": i["cidrIpv4"], "Description": i["description"]}]
        else:
            perm["UserIdGroupPairs"] = [{"GroupId": self.m(i["referencedSecurityGroupId"]),
                                         "Description": i["description"]}]
        return [perm]

    def _SecurityGroupIngressRule(self, reg: Registered, i: dict) -> None:  # noqa: N802
        self.ec2.authorize_security_group_ingress(GroupId=self.m(i["securityGroupId"]),
                                                  IpPermissions=self._permission(i))

    def _SecurityGroupEgressRule(self, reg: Registered, i: dict) -> None:  # noqa: N802
        self.ec2.authorize_security_group_egress(GroupId=self.m(i["securityGroupId"]),
                                                 IpPermissions=self._permission(i))

    def _Instance(self, reg: Registered, i: dict) -> str:  # noqa: N802
        groups = [self.m(g) for g in i["vpcSecurityGroupIds"]]
        network = ({"NetworkInterfaces": [{
            "DeviceIndex": 0, "SubnetId": self.m(i["subnetId"]), "Groups": groups,
            "AssociatePublicIpAddress": True}]} if i.get("associatePublicIpAddress")
            else {"SubnetId": self.m(i["subnetId"]), "SecurityGroupIds": groups})
        return self.ec2.run_instances(
            ImageId=self.image, InstanceType=i["instanceType"], MinCount=1, MaxCount=1,
            UserData=i["userData"], MetadataOptions=_metadata_options(i),
            DisableApiTermination=i["disableApiTermination"],
            TagSpecifications=_tags(i["tags"], "instance"), **network)["Instances"][0][
            "InstanceId"]

    def _Volume(self, reg: Registered, i: dict) -> str:  # noqa: N802
        return self.ec2.create_volume(
            AvailabilityZone=i["availabilityZone"], Size=int(i["size"]),
            VolumeType=i["type"], Encrypted=i["encrypted"],
            TagSpecifications=_tags(i["tags"], "volume"))["VolumeId"]

    def _VolumeAttachment(self, reg: Registered, i: dict) -> None:  # noqa: N802
        self.ec2.attach_volume(Device=i["deviceName"], InstanceId=self.m(i["instanceId"]),
                               VolumeId=self.m(i["volumeId"]))

    def _LaunchTemplate(self, reg: Registered, i: dict) -> str:  # noqa: N802
        data = {
            "ImageId": self.image, "InstanceType": i["instanceType"],
            "SecurityGroupIds": [self.m(g) for g in i["vpcSecurityGroupIds"]],
            "UserData": i["userData"], "MetadataOptions": _metadata_options(i),
            "BlockDeviceMappings": [{"DeviceName": b["deviceName"], "Ebs": {
                "Encrypted": b["ebs"]["encrypted"] == "true", "VolumeType": b["ebs"]["volumeType"],
                "VolumeSize": int(b["ebs"]["volumeSize"])}} for b in i["blockDeviceMappings"]],
            "TagSpecifications": [{"ResourceType": t["resourceType"], "Tags": [
                {"Key": k, "Value": v} for k, v in t["tags"].items()]}
                for t in i["tagSpecifications"]],
        }
        base64.b64decode(i["userData"], validate=True)  # launch templates take base64
        return self.ec2.create_launch_template(LaunchTemplateName=reg.name,
                                               LaunchTemplateData=data)["LaunchTemplate"][
            "LaunchTemplateId"]

    # ------------------------------------------------------------------ ELBv2
    def _LoadBalancer(self, reg: Registered, i: dict) -> str:  # noqa: N802
        lb = self.elbv2.create_load_balancer(
            Name=reg.outputs["name"], Type="network",
            Scheme="internal" if i["internal"] else "internet-facing",
            Subnets=[self.m(s) for s in i["subnets"]],
            SecurityGroups=[self.m(g) for g in i["securityGroups"]],
            Tags=[{"Key": k, "Value": v} for k, v in i["tags"].items()])["LoadBalancers"][0]
        attributes = [
            {"Key": "load_balancing.cross_zone.enabled",
             "Value": str(i["enableCrossZoneLoadBalancing"]).lower()},
            {"Key": "deletion_protection.enabled",
             "Value": str(i["enableDeletionProtection"]).lower()}]
        if "dnsRecordClientRoutingPolicy" in i:
            attributes.append({"Key": "dns_record.client_routing_policy",
                               "Value": i["dnsRecordClientRoutingPolicy"]})
        self.elbv2.modify_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"],
                                                   Attributes=attributes)
        self.ids[reg.outputs["dnsName"]] = lb["DNSName"]  # records name the balancer by it
        return lb["LoadBalancerArn"]

    def _TargetGroup(self, reg: Registered, i: dict) -> str:  # noqa: N802
        hc = i["healthCheck"]
        http: dict[str, Any] = {}
        if hc["protocol"] != "TCP":
            http = {"HealthCheckPath": hc["path"], "Matcher": {"HttpCode": hc["matcher"]}}
        tg = self.elbv2.create_target_group(
            Name=reg.outputs["name"], Protocol=i["protocol"], Port=int(i["port"]),
            VpcId=self.m(i["vpcId"]), TargetType=i["targetType"],
            HealthCheckProtocol=hc["protocol"], HealthCheckPort=hc["port"],
            HealthCheckIntervalSeconds=int(hc["interval"]),
            HealthCheckTimeoutSeconds=int(hc["timeout"]),
            HealthyThresholdCount=int(hc["healthyThreshold"]),
            UnhealthyThresholdCount=int(hc["unhealthyThreshold"]), **http)["TargetGroups"][0]
        attributes = [{"Key": "load_balancing.cross_zone.enabled",
                       "Value": i["loadBalancingCrossZoneEnabled"]}]
        failover = i.get("targetGroupHealth", {}).get("dnsFailover", {})
        for key, attribute in (("minimumHealthyTargetsCount", "count"),
                               ("minimumHealthyTargetsPercentage", "percentage")):
            if key in failover:
                attributes.append({
                    "Key": f"target_group_health.dns_failover.minimum_healthy_targets.{attribute}",
                    "Value": failover[key]})
        self.elbv2.modify_target_group_attributes(TargetGroupArn=tg["TargetGroupArn"],
                                                  Attributes=attributes)
        return tg["TargetGroupArn"]

    def _TargetGroupAttachment(self, reg: Registered, i: dict) -> None:  # noqa: N802
        self.elbv2.register_targets(TargetGroupArn=self.m(i["targetGroupArn"]), Targets=[
            {"Id": self.m(i["targetId"]), "Port": int(i["port"])}])

    def _Listener(self, reg: Registered, i: dict) -> str:  # noqa: N802
        return self.elbv2.create_listener(
            LoadBalancerArn=self.m(i["loadBalancerArn"]), Protocol=i["protocol"],
            Port=int(i["port"]), DefaultActions=[
                {"Type": a["type"], "TargetGroupArn": self.m(a["targetGroupArn"])}
                for a in i["defaultActions"]])["Listeners"][0]["ListenerArn"]

    # ------------------------------------------------------------------ Route 53
    def _Zone(self, reg: Registered, i: dict) -> str:  # noqa: N802
        (first, *others) = i["vpcs"]
        zone = self.route53.create_hosted_zone(
            Name=i["name"], CallerReference=reg.name, HostedZoneConfig={
                "Comment": i["comment"], "PrivateZone": True},
            VPC={"VPCRegion": first.get("vpcRegion", self.region),
                 "VPCId": self.m(first["vpcId"])})["HostedZone"]
        zone_id = zone["Id"].removeprefix("/hostedzone/")
        for vpc in others:
            self.route53.associate_vpc_with_hosted_zone(HostedZoneId=zone_id, VPC={
                "VPCRegion": vpc.get("vpcRegion", self.region), "VPCId": self.m(vpc["vpcId"])})
        self.route53.change_tags_for_resource(
            ResourceType="hostedzone", ResourceId=zone_id,
            AddTags=[{"Key": k, "Value": v} for k, v in i["tags"].items()])
        return zone_id

    def _Record(self, reg: Registered, i: dict) -> None:  # noqa: N802
        self.route53.change_resource_record_sets(
            HostedZoneId=self.m(i["zoneId"]), ChangeBatch={"Changes": [{
                "Action": "CREATE", "ResourceRecordSet": {
                    "Name": i["name"], "Type": i["type"], "TTL": int(i["ttl"]),
                    "ResourceRecords": [{"Value": self.m(v)} for v in i["records"]],
                }}]})

    # ------------------------------------------------------------------ Auto Scaling
    def _Group(self, reg: Registered, i: dict) -> str:  # noqa: N802
        name = reg.outputs["name"]
        self.asg.create_auto_scaling_group(
            AutoScalingGroupName=name, MinSize=int(i["minSize"]), MaxSize=int(i["maxSize"]),
            DesiredCapacity=int(i["desiredCapacity"]),
            LaunchTemplate={"LaunchTemplateId": self.m(i["launchTemplate"]["id"]),
                            "Version": i["launchTemplate"]["version"]},
            VPCZoneIdentifier=",".join(self.m(s) for s in i["vpcZoneIdentifiers"]),
            HealthCheckType=i["healthCheckType"],
            Tags=[{"Key": t["key"], "Value": t["value"],
                   "PropagateAtLaunch": t["propagateAtLaunch"], "ResourceId": name,
                   "ResourceType": "auto-scaling-group"} for t in i["tags"]])
        return name
