"""kafka-agent testbed: moto, with the AWS semantics the agent depends on.

Bare moto is far more permissive than AWS: it re-attaches an in-use volume or ENI without a
word, attaches across AZs, changes every state instantly and does not implement the signal
APIs. This WSGI layer sits in front of moto's own application and adds:

* refusals AWS gives: VolumeInUse, InvalidVolume.ZoneMismatch, InvalidNetworkInterface.InUse,
  cross-AZ ENI attach, occupied device index / attachment point, attach to a dead instance;
* time: attaching/detaching states for a configurable time; a terminated instance goes
  through `shutting-down` (DetachVolume / DetachNetworkInterface refused meanwhile), its
  non-root volumes and extra ENIs stay attached to it for a configurable time after it is
  `terminated`, and it vanishes from DescribeInstances after a while;
* eventual consistency: a new instance is invisible to DescribeInstances for a while;
* CloudWatch Logs GetLogEvents may answer empty pages with a new token;
* CloudFormation SignalResource (with CreationPolicy signal counting), Auto Scaling
  CompleteLifecycleAction and RecordLifecycleActionHeartbeat, all recorded for tests;
* Auto Scaling as the service runs a group: health checks replace terminated or Unhealthy
  instances (terminate first, or launch first by the instance maintenance policy), launches
  spread over the zones, launch hooks hold new instances in Pending:Wait and termination hooks
  leaving ones in Terminating:Wait (still running) until completed or timed out, scale-in
  follows the default termination policy, and each instance's target lifecycle state is
  served to its IMDS;
* faults: a share of calls answered with throttling errors or 5xx, and added latency.

Settings are per *scope*, the access key id of the caller, so tests sharing one server do not
see each other's faults. Control and inspection endpoints live under /_testbed/.

Transitions are evaluated lazily (every request first applies what is due), under one lock.
"""

import argparse
import functools
import io
import ipaddress
import json
import random
import re
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs

from werkzeug.serving import run_simple
from werkzeug.test import run_wsgi_app
from werkzeug.wrappers import Request, Response

from moto.autoscaling.models import (
    AutoScalingBackend,
    FakeAutoScalingGroup,
    autoscaling_backends,
)
from moto.cloudformation.models import cloudformation_backends
from moto.cloudformation.parsing import clean_json
from moto.core import DEFAULT_ACCOUNT_ID
import moto.backends as moto_backends
import moto.core.responses as moto_responses
from moto.ec2.models import ec2_backends
import moto.ec2.models.core as ec2_core
import moto.ec2.models.elastic_network_interfaces as eni_models
import moto.ec2.utils as ec2_utils
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

LOCK = threading.RLock()
# Notified (under LOCK) whenever a call that may change EC2's state was served: the
# hypervisor's state reads wait on it instead of polling on a fixed period.
CHANGED = threading.Condition(LOCK)
GENERATION = [0]  # calls served that may have changed state

DEFAULTS = {
    "attach_delay": 0.0,  # seconds in "attaching"
    "detach_delay": 0.0,  # seconds in "detaching"
    "release_delay": 0.0,  # seconds a terminated instance keeps its volumes and extra ENIs
    # Seconds a new instance is "pending" before "running" (RunInstances answers "pending"; the
    # instance boots only once running).
    "pending_delay": 0.2,
    # Seconds in "shutting-down" before "terminated". EC2 takes the OS down first
    # (TerminateInstances: "shutting-down" is the CurrentState it answers), and refuses to
    # detach volumes meanwhile (hashicorp/terraform#18965: IncorrectInstanceState).
    "shutdown_delay": 2.0,
    # Seconds a terminated instance stays listed ("about an hour", TerminateInstances doc).
    "vanish_delay": 3600.0,
    # Seconds a new instance stays invisible to DescribeInstances (EC2 eventual consistency:
    # "might not be immediately visible", InvalidInstanceID.NotFound right after
    # RunInstances; docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html).
    "visibility_delay": 1.0,
    # Seconds DescribeVolumes keeps showing a volume as available after it was attached
    # (DescribeInstances and DescribeVolumes disagree on attach state for a while:
    # kubernetes-sigs/aws-ebs-csi-driver#2183).
    "stale_volume_reads": 0.0,
    # GetLogEvents answers this many empty pages (each with a new forward token) before the
    # events of a stream read from its head: "partially full or empty pages don't necessarily
    # mean that pagination is finished" (GetLogEvents API reference; boto/boto3#3718).
    "logs_empty_pages": 0,
    # The code of injected EC2 5xx errors: InternalError (500), or Unavailable /
    # ServiceUnavailable (503), EC2's other server error codes.
    "ec2_error_code": "InternalError",
    # Faults after the mutation: this share of the calls to `fault_after_actions` is applied,
    # and then answered with a 5xx as if the reply was lost. AWS applies a call before a
    # timeout or a 5xx may reach the caller, and the SDK retries it (so a retried
    # CreateLogStream meets ResourceAlreadyExists).
    "fault_after_rate": 0.0,
    "fault_after_actions": [],
    # At most this many calls per scope get a fault after the mutation (None: no limit), so a
    # test can have exactly the first CreateLogStream applied and its reply lost.
    "fault_after_limit": None,
    # Token buckets per API, as EC2 and CloudWatch Logs meter calls per account and action
    # ("EC2 API throttling": a bucket per API refilled at a fixed rate; CreateLogStream 50
    # TPS, DescribeLogStreams 5 TPS in the CloudWatch Logs quotas): action -> [rate per second,
    # burst]. A call finding its bucket empty is throttled.
    "rate_limits": {},
    "throttle_rate": 0.0,  # share of calls answered with a throttling error
    "error_rate": 0.0,  # share of calls answered with a 5xx
    "latency_ms": 0,  # added to every call
    "fault_actions": None,  # list of actions faults apply to; None = all
    # Actions the caller's role may not call: each is answered as IAM refuses, EC2 with
    # UnauthorizedOperation (403; "Error codes for the Amazon EC2 API"), the JSON services
    # (CloudWatch Logs) with AccessDeniedException (400; CloudWatch Logs API Reference,
    # "Common Errors"), the query ones with AccessDenied (403). A least-privilege role an
    # operator writes may leave out what the agent could do without (CreateLogGroup on a group
    # made beforehand).
    "denied_actions": [],
    # Seconds between an Auto Scaling group's health checks: an instance EC2 no longer runs,
    # or one marked Unhealthy, is replaced at the next one. The service publishes no interval
    # ("continuously monitors"); EC2's own status checks run every minute
    # (docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-system-instance-status-check.html).
    "asg_health_check_interval": 1.0,
    # Multiplies lifecycle hook timeouts (HeartbeatTimeout, the global timeout): PutLifecycleHook
    # takes 30 to 7200 seconds as the service does, and 0.02 makes a 30 s timeout last 0.6 s.
    "lifecycle_time_scale": 1.0,
    # Whether AttachInstances runs the group's launch hooks on the attached instances (the
    # service does not; see attach_instances).
    "asg_attach_runs_launch_hooks": True,
}
SCOPES = {}  # access key id -> settings overrides

PENDING = {}  # key -> (due, fn): lazily applied transitions
ENI_STATE = {}  # eni id -> "attaching" | "detaching" (overlay on moto's "attached")
SIGNALS = []  # SignalResource calls accepted
LIFECYCLE = []  # CompleteLifecycleAction / RecordLifecycleActionHeartbeat calls accepted
CREATION = {}  # stack id -> {logical id: {"count", "success", "deadline"}}
BUCKETS = {}  # (scope, action) -> [tokens, last refill]: rate_limits' token buckets
FIRST_SEEN = {}  # instance id -> monotonic time the testbed first saw it (its launch)
TERMINATED_AT = {}  # instance id -> monotonic time it became "terminated"
VOLUME_ATTACHED = {}  # volume id -> (attachment it was last seen with, monotonic time seen)
EMPTY_PAGES = {}  # forward token of an injected empty GetLogEvents page -> pages served
STATS = {}  # scope -> action -> [calls, seconds spent serving]


class AwsError(Exception):
    def __init__(self, code, message, status=400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


TIMING = (
    "attach_delay",
    "detach_delay",
    "release_delay",
    "pending_delay",
    "shutdown_delay",
    "vanish_delay",
)
# What the testbed's own calls never see: it must know the world as it is.
ADMIN_OFF = {"visibility_delay": 0.0, "logs_empty_pages": 0, "stale_volume_reads": 0.0}


FAULTS_AFTER = {}  # scope -> faults after the mutation served so far


def fault_after_allowed(scope, conf):
    limit = conf.get("fault_after_limit")
    with LOCK:
        used = FAULTS_AFTER.get(scope, 0)
        if limit is not None and used >= limit:
            return False
        FAULTS_AFTER[scope] = used + 1
        return True


def settings(scope):
    """A scope's settings. `<scope>-admin` (the testbed's own calls) shares the timing of
    `<scope>` (delays belong to the simulated world) but never gets faults, and sees every
    instance and every event at once."""
    merged = dict(DEFAULTS)
    if scope.endswith("-admin"):
        base = SCOPES.get(scope[: -len("-admin")], {})
        merged.update({k: v for k, v in base.items() if k in TIMING})
        merged.update(ADMIN_OFF)
    else:
        merged.update(SCOPES.get(scope, {}))
    return merged


def schedule(key, delay, fn):
    if delay <= 0:
        PENDING.pop(key, None)
        fn()
    else:
        PENDING[key] = (time.monotonic() + delay, fn)


def tick():
    now = time.monotonic()
    due = sorted((d, k) for k, (d, _) in PENDING.items() if d <= now)
    for _, key in due:
        _, fn = PENDING.pop(key)
        fn()
    autoscaling_tick(now)
    for stack_id, resources in list(CREATION.items()):
        for info in resources.values():
            if info["success"] < info["count"] and now > info["deadline"]:
                set_stack_status(stack_id, "CREATE_FAILED")
                CREATION.pop(stack_id, None)
                break


# ---------------------------------------------------------------- moto model patches
_orig_attachment = NetworkInterface.attachment


def _attachment(self):
    att = _orig_attachment.fget(self)
    if att is not None and self.id in ENI_STATE:
        att.status = ENI_STATE[self.id]
    return att


NetworkInterface.attachment = property(_attachment)

# moto gives a new ENI a random address of its subnet without looking: it can be the gateway,
# the broadcast address, or an address an instance or another ENI already has. EC2 hands out
# only free addresses outside the five it reserves; so does this.
_orig_eni_init = NetworkInterface.__init__
_orig_random_private_ip = eni_models.random_private_ip
_ENI_SUBNET = []


def _eni_init(self, ec2_backend, subnet, *args, **kwargs):
    _ENI_SUBNET.append(subnet)
    try:
        _orig_eni_init(self, ec2_backend, subnet, *args, **kwargs)
    finally:
        _ENI_SUBNET.pop()
    for entry in self.private_ip_addresses:
        ip = entry.get("PrivateIpAddress") if isinstance(entry, dict) else None
        if ip and ip not in subnet._subnet_ips:
            try:
                subnet.request_ip(ip, self)
            except Exception:  # an address outside the subnet: moto answers for it
                pass


def _free_private_ip(cidr=None, ipv6=False):
    subnet = _ENI_SUBNET[-1] if _ENI_SUBNET else None
    if ipv6 or subnet is None or cidr != subnet.cidr_block:
        return _orig_random_private_ip(cidr, ipv6)
    net = ipaddress.IPv4Network(cidr)
    used = set(subnet._subnet_ips)
    for eni in subnet.ec2_backend.enis.values():
        used.update(
            e.get("PrivateIpAddress")
            for e in eni.private_ip_addresses
            if isinstance(e, dict)
        )
    hosts = list(net.hosts())[3:]  # .1 to .3 are the router, DNS and reserved
    free = [str(ip) for ip in hosts if str(ip) not in used]
    if not free:
        raise AwsError(
            "InsufficientFreeAddressesInSubnet",
            f"There are not enough free addresses in subnet '{subnet.id}' to satisfy the "
            "requested number of instances.",
        )
    return random.choice(free)


NetworkInterface.__init__ = _eni_init
eni_models.random_private_ip = _free_private_ip


# moto's server redoes per request what never changes while it runs: `call_action` lists a
# response class's methods through inspect.getmembers, and the host dispatcher lists moto's
# package directory on disk. Profiled with py-spy under `kafka-testbed bench-boot`, these were
# over a quarter of its time per call; answered once, they change no reply.
moto_responses.method_names_from_class = functools.cache(moto_responses.method_names_from_class)
_MOTO_MODULES = tuple(moto_backends.list_of_moto_modules())
moto_backends.list_of_moto_modules = lambda: _MOTO_MODULES


# A resource's own tags: moto answers them through describe_tags(resource-id filter), which
# compiles a regex and walks every tag of every resource in the region, for each resource a
# Describe* filter looks at: a DescribeNetworkInterfaces with tag filters cost O(resources x
# tags), 12-38 ms per call under `bench-boot` (py-spy). This reads the same dict directly and
# returns the same rows (an EC2 id has no wildcard, so moto's pattern is an exact match).
def _own_tags(self):
    if not self.id:
        return []
    tags = self.ec2_backend.tags.get(self.id)
    if not tags:
        return []
    kind = ec2_utils.EC2_PREFIX_TO_RESOURCE.get(ec2_utils.get_prefix(self.id), "")
    return [
        {"resource_id": self.id, "key": k, "value": v, "resource_type": kind}
        for k, v in list(tags.items())
    ]


ec2_core.TaggedEC2Resource.get_tags = _own_tags


# ---------------------------------------------------------------- request plumbing
def request_id():
    return str(uuid.uuid4())


def parse_call(environ, body):
    """(service, region, access key, action, params, protocol) of an AWS call."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    m = re.search(r"Credential=([^/]+)/[^/]+/([^/]+)/([^/]+)/", auth)
    key, region, service = (m.group(1), m.group(2), m.group(3)) if m else ("", "us-east-1", "")
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        params = {}
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            pass
        return service, region, key, target.split(".")[-1], params, "json"
    qs = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    if not qs and environ.get("QUERY_STRING"):
        qs = parse_qs(environ["QUERY_STRING"], keep_blank_values=True)
    params = {k: v[0] for k, v in qs.items()}
    protocol = "ec2" if service == "ec2" else "query"
    return service, region, key, params.get("Action", ""), params, protocol


def error_response(err, protocol):
    rid = request_id()
    if protocol == "json":
        body = json.dumps({"__type": err.code, "message": err.message})
        return Response(
            body,
            status=err.status,
            headers={"x-amzn-ErrorType": err.code, "x-amzn-RequestId": rid},
            content_type="application/x-amz-json-1.1",
        )
    if protocol == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{err.code}</Code><Message>{xml_escape(err.message)}</Message>"
            f"</Error></Errors><RequestID>{rid}</RequestID></Response>"
        )
    else:
        kind = "Receiver" if err.status >= 500 else "Sender"
        body = (
            "<ErrorResponse><Error>"
            f"<Type>{kind}</Type><Code>{err.code}</Code><Message>{xml_escape(err.message)}</Message>"
            f"</Error><RequestId>{rid}</RequestId></ErrorResponse>"
        )
    return Response(body, status=err.status, content_type="text/xml")


def xml_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def xml_response(action, namespace, inner, query_style):
    rid = request_id()
    if query_style:
        body = (
            f'<{action}Response xmlns="{namespace}"><{action}Result>{inner}</{action}Result>'
            f"<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></{action}Response>"
        )
    else:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{namespace}">'
            f"<requestId>{rid}</requestId>{inner}</{action}Response>"
        )
    return Response(body, status=200, content_type="text/xml")


EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
ASG_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
CFN_NS = "http://cloudformation.amazonaws.com/doc/2010-05-15/"


def throttle_error(protocol, service):
    if service == "ec2":
        return AwsError("RequestLimitExceeded", "Request limit exceeded.", 503)
    if protocol == "json":
        return AwsError("ThrottlingException", "Rate exceeded", 400)
    return AwsError("Throttling", "Rate exceeded", 400)


def denied_error(protocol, service, action):
    if service == "ec2":
        return AwsError("UnauthorizedOperation",
                        "You are not authorized to perform this operation.", 403)
    if protocol == "json":
        return AwsError("AccessDeniedException",
                        f"User is not authorized to perform: {service}:{action}", 400)
    return AwsError("AccessDenied", f"User is not authorized to perform: {service}:{action}", 403)


def server_error(conf, protocol, service):
    if service == "ec2":
        code = conf.get("ec2_error_code") or "InternalError"
        status = 500 if code == "InternalError" else 503
        return AwsError(code, "An internal error has occurred", status)
    if protocol == "json":
        return AwsError("ServiceUnavailableException", "Service unavailable", 503)
    return AwsError("InternalFailure", "An internal error has occurred", 500)


def bucket_allows(scope, conf, action):
    """Takes a token from the caller's bucket for `action`; False when it is empty."""
    limit = (conf.get("rate_limits") or {}).get(action)
    if not limit:
        return True
    rate, burst = float(limit[0]), float(limit[1])
    now = time.monotonic()
    with LOCK:
        tokens, last = BUCKETS.get((scope, action), (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            BUCKETS[(scope, action)] = (tokens, now)
            return False
        BUCKETS[(scope, action)] = (tokens - 1.0, now)
        return True


def fault_for(conf, action, protocol, service):
    actions = conf.get("fault_actions")
    if actions is not None and action not in actions:
        return None
    roll = random.random()
    if roll < conf["throttle_rate"]:
        return throttle_error(protocol, service)
    if roll < conf["throttle_rate"] + conf["error_rate"]:
        return server_error(conf, protocol, service)
    return None


# ---------------------------------------------------------------- EC2
def ec2(region, account=DEFAULT_ACCOUNT_ID):
    return ec2_backends[account][region]


def find_instance(backend, instance_id):
    for instance in backend.all_instances():
        if instance.id == instance_id:
            return instance
    return None


def require_live(instance):
    if instance.state not in ("running", "stopped"):
        raise AwsError(
            "IncorrectInstanceState",
            f"The instance '{instance.id}' is not in a valid state for this operation.",
        )


def refuse_while_shutting_down(instance, what):
    """EC2 takes a dying instance's OS down before it lets go of its volumes and interfaces,
    and refuses to detach them meanwhile (hashicorp/terraform#18965)."""
    if instance.state == "shutting-down":
        raise AwsError(
            "IncorrectInstanceState",
            f"The instance '{instance.id}' is not in a state in which {what} can be detached.",
        )


# EBS device names EC2 accepts on Linux: /dev/sd[a-z], /dev/xvd[a-z] and /dev/xvd[b-c][a-z];
# anything else, e.g. a partition name, is "not a valid EBS device name"
# (InvalidParameterValue, sous-chefs/aws#134).
DEVICE_NAME = re.compile(r"/dev/(sd[a-z]|xvd[a-z]|xvd[b-c][a-z])")


def attach_volume(call):
    backend = ec2(call["region"])
    vid, iid, device = (call["params"].get(k) for k in ("VolumeId", "InstanceId", "Device"))
    volume = backend.volumes.get(vid)
    instance = find_instance(backend, iid)
    if volume is None or instance is None:
        return None  # moto's NotFound errors are AWS's
    if device is None or not DEVICE_NAME.fullmatch(device):
        raise AwsError("InvalidParameterValue", f"Value ({device}) for parameter device is invalid. "
                       f"{device} is not a valid EBS device name.")
    require_live(instance)
    if volume.zone.name != instance.placement.zone:
        raise AwsError(
            "InvalidVolume.ZoneMismatch",
            f"The volume '{vid}' is not in the same availability zone as instance '{iid}'",
        )
    if volume.attachment is not None:
        raise AwsError("VolumeInUse", f"{vid} is already attached to an instance")
    if device in instance.block_device_mapping:
        raise AwsError("InvalidParameterValue", f"Attachment point {device} is already in use")

    def after(_response):
        att = volume.attachment
        delay = call["conf"]["attach_delay"]
        if att is None or delay <= 0:
            return
        att.status = "attaching"

        def done():
            if volume.attachment is att and att.status == "attaching":
                att.status = "attached"

        schedule(("vol", vid), delay, done)

    return after


def finish_volume_detach(backend, volume, att):
    if volume.attachment is att:
        backend.detach_volume(volume.id, att.instance.id, att.device)


def detach_volume(call):
    backend = ec2(call["region"])
    vid, iid = call["params"].get("VolumeId"), call["params"].get("InstanceId")
    volume = backend.volumes.get(vid)
    if volume is None:
        return None
    att = volume.attachment
    if att is None:
        raise AwsError("IncorrectState", f"Volume '{vid}' is in the 'available' state.")
    if iid and iid != att.instance.id:
        raise AwsError(
            "InvalidAttachment.NotFound",
            f"The volume '{vid}' is not attached to instance '{iid}'.",
        )
    refuse_while_shutting_down(att.instance, "volumes")
    if att.status != "detaching":
        att.status = "detaching"
        schedule(
            ("vol", vid),
            call["conf"]["detach_delay"],
            lambda: finish_volume_detach(backend, volume, att),
        )
    inner = (
        f"<volumeId>{vid}</volumeId><instanceId>{att.instance.id}</instanceId>"
        f"<device>{att.device}</device><status>detaching</status>"
        f"<attachTime>{att.attach_time.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</attachTime>"
    )
    return xml_response("DetachVolume", EC2_NS, inner, False)


# Network interfaces per instance type (EC2 User Guide, "Maximum network interfaces"); a type
# not listed gets 3. AttachNetworkInterface beyond it: AttachmentLimitExceeded (cilium#15877).
ENI_LIMITS = {
    "t2.nano": 2, "t2.micro": 2, "t2.small": 3, "t2.medium": 3, "t2.large": 3,
    "t3.nano": 2, "t3.micro": 2, "t3.small": 3, "t3.medium": 3, "t3.large": 3,
    "m4.large": 2, "m5.large": 3, "m5.xlarge": 4, "m5.2xlarge": 4, "m6i.large": 3,
    "c4.large": 3, "c5.large": 3, "r5.large": 3, "i3.large": 3,
}


def attach_eni(call):
    backend = ec2(call["region"])
    params = call["params"]
    eni = backend.enis.get(params.get("NetworkInterfaceId"))
    instance = find_instance(backend, params.get("InstanceId"))
    if eni is None or instance is None:
        return None
    require_live(instance)
    if eni.subnet.availability_zone != instance.placement.zone:
        raise AwsError(
            "InvalidParameterCombination",
            "You may not attach a network interface to an instance if they are not in the "
            "same availability zone",
        )
    if eni.attachment_id is not None:
        raise AwsError("InvalidNetworkInterface.InUse", f"Interface: [{eni.id}] in use.")
    limit = ENI_LIMITS.get(instance.instance_type, 3)
    if len(instance.nics) + 1 > limit:
        raise AwsError(
            "AttachmentLimitExceeded",
            f"Interface count {len(instance.nics) + 1} exceeds the limit for "
            f"{instance.instance_type}",
        )
    index = int(params.get("DeviceIndex", "-1"))
    if index in instance.nics:
        raise AwsError(
            "InvalidParameterValue",
            f"Instance '{instance.id}' already has an interface attached at device index "
            f"'{index}'.",
        )

    def after(_response):
        delay = call["conf"]["attach_delay"]
        if eni.attachment_id is None or delay <= 0:
            return
        ENI_STATE[eni.id] = "attaching"
        attachment_id = eni.attachment_id

        def done():
            if eni.attachment_id == attachment_id and ENI_STATE.get(eni.id) == "attaching":
                ENI_STATE.pop(eni.id, None)

        schedule(("eni", eni.id), delay, done)

    return after


def finish_eni_detach(eni, attachment_id):
    if eni.attachment_id == attachment_id and eni.instance is not None:
        eni.instance.detach_eni(eni)
    ENI_STATE.pop(eni.id, None)


def detach_eni(call):
    backend = ec2(call["region"])
    attachment_id = call["params"].get("AttachmentId")
    eni = next((e for e in backend.enis.values() if e.attachment_id == attachment_id), None)
    if eni is None:
        return None
    if eni.device_index == 0:
        raise AwsError(
            "OperationNotPermitted",
            "The network interface at device index 0 cannot be detached.",
        )
    if eni.instance is not None:
        refuse_while_shutting_down(eni.instance, "network interfaces")
    if ENI_STATE.get(eni.id) != "detaching":
        ENI_STATE[eni.id] = "detaching"
        schedule(
            ("eni", eni.id),
            call["conf"]["detach_delay"],
            lambda: finish_eni_detach(eni, attachment_id),
        )
    return xml_response("DetachNetworkInterface", EC2_NS, "<return>true</return>", False)


def terminated(instance):
    if instance.state == "shutting-down":
        instance._state.name, instance._state.code = "terminated", 48
        TERMINATED_AT[instance.id] = time.monotonic()


# Calls after which an instance may exist that did not before (moto's Auto Scaling launches
# and replaces instances inside these); DescribeInstances notes them too.
LAUNCHING = {
    "RunInstances",
    "TerminateInstances",
    "CreateAutoScalingGroup",
    "UpdateAutoScalingGroup",
    "SetDesiredCapacity",
    "SetInstanceHealth",
    "TerminateInstanceInAutoScalingGroup",
    "AttachInstances",
    "ExecutePolicy",
    "CreateStack",
    "UpdateStack",
}


def note_instances(region, conf):
    """Remembers when each instance was first seen (every call is looked at, so that is its
    launch, whoever launched it: RunInstances, an Auto Scaling Group), and keeps a new one
    `pending` for a while before it runs."""
    now = time.monotonic()
    for instance in ec2(region).all_instances():
        if instance.id in FIRST_SEEN:
            continue
        FIRST_SEEN[instance.id] = now
        if conf["pending_delay"] > 0 and instance.state == "running":
            instance._state.name, instance._state.code = "pending", 0

            def run(i=instance):
                if i.state == "pending":
                    i._state.name, i._state.code = "running", 16

            schedule(("pending", instance.id), conf["pending_delay"], run)


def hidden_instances(region, conf):
    """Instances DescribeInstances does not list for this caller yet (just launched) or any
    more (terminated long ago)."""
    now = time.monotonic()
    hidden = set()
    for instance in ec2(region).all_instances():
        if now - FIRST_SEEN.get(instance.id, now) < conf["visibility_delay"]:
            hidden.add(instance.id)
        gone = TERMINATED_AT.get(instance.id)
        if gone is not None and now - gone >= conf["vanish_delay"]:
            hidden.add(instance.id)
    return hidden


def parse_xml(response):
    """A response's XML root, and a function naming an element in its namespace."""
    root = ET.fromstring(response.get_data())
    ns = root.tag[1 : root.tag.index("}")] if root.tag.startswith("{") else ""
    ET.register_namespace("", ns)
    return root, (lambda name: f"{{{ns}}}{name}" if ns else name)


def describe_instances(call):
    note_instances(call["region"], call["conf"])
    hidden = hidden_instances(call["region"], call["conf"])
    if not hidden:
        return None
    named = [v for k, v in call["params"].items() if k.startswith("InstanceId.")]
    missing = [i for i in named if i in hidden]
    if missing:
        raise AwsError(
            "InvalidInstanceID.NotFound",
            f"The instance ID '{missing[0]}' does not exist",
        )

    def after(response):
        root, q = parse_xml(response)
        for rset in root.iter(q("reservationSet")):
            for reservation in list(rset):
                iset = reservation.find(q("instancesSet"))
                if iset is None:
                    continue
                for item in list(iset):
                    if item.findtext(q("instanceId")) in hidden:
                        iset.remove(item)
                if len(iset) == 0:
                    rset.remove(reservation)
        response.set_data(ET.tostring(root, encoding="utf-8", xml_declaration=True))

    return after


def describe_volumes(call):
    """A volume attached moments ago still shows as available (eventual consistency)."""
    window = call["conf"]["stale_volume_reads"]
    backend = ec2(call["region"])
    now = time.monotonic()
    fresh = set()
    for volume in backend.volumes.values():
        att = volume.attachment
        key = None if att is None else (att.instance.id, att.device)
        seen = VOLUME_ATTACHED.get(volume.id)
        if seen is None or seen[0] != key:
            VOLUME_ATTACHED[volume.id] = (key, now)
            seen = (key, now)
        if key is not None and now - seen[1] < window:
            fresh.add(volume.id)
    if not fresh:
        return None

    def after(response):
        root, q = parse_xml(response)
        for item in root.iter(q("item")):
            if item.findtext(q("volumeId")) not in fresh:
                continue
            status = item.find(q("status"))
            atts = item.find(q("attachmentSet"))
            if status is None or atts is None:
                continue
            status.text = "available"
            for a in list(atts):
                atts.remove(a)
        response.set_data(ET.tostring(root, encoding="utf-8", xml_declaration=True))

    return after


def terminate_instances(call):
    """Keep non-root volumes and extra ENIs attached to the dead instance for a while."""
    ids = [v for k, v in call["params"].items() if k.startswith("InstanceId.")]
    return prepare_termination(ec2(call["region"]), ids, call["conf"])


def ec2_terminate(region, ids, conf):
    """TerminateInstances as the testbed's own call (an Auto Scaling group terminating its
    instances): the same shutting-down and held attachments as a caller's."""
    backend = ec2(region)
    live = [
        i
        for i in ids
        if (inst := find_instance(backend, i)) is not None
        and inst.state not in ("terminated", "shutting-down")
    ]
    if not live:
        return
    after = prepare_termination(backend, live, conf)
    backend.terminate_instances(live)
    after(None)


def prepare_termination(backend, ids, conf):
    """What TerminateInstances of `ids` does besides moto's termination: returns the function
    to run once moto has terminated them."""
    held = []
    for iid in ids:
        instance = find_instance(backend, iid)
        if instance is None or instance.state in ("terminated", "shutting-down"):
            continue
        for device, bdm in list(instance.block_device_mapping.items()):
            if device == instance.root_device_name or bdm.delete_on_termination:
                continue
            volume = backend.volumes.get(bdm.volume_id)
            if volume is not None and volume.attachment is not None:
                del instance.block_device_mapping[device]
                held.append(("vol", instance, device, bdm, volume))
        # The primary interface stays with the dead instance (moto's DescribeInstances needs it).
        for index, eni in list(instance.nics.items()):
            if index != 0 and not eni.delete_on_termination:
                held.append(("eni", instance, index, None, eni))

    dying = [
        i
        for i in (find_instance(backend, iid) for iid in ids)
        if i is not None and i.state not in ("terminated", "shutting-down")
    ]

    def after(_response):
        shutdown = conf["shutdown_delay"]
        delay = shutdown + conf["release_delay"]
        for instance in dying:
            if shutdown > 0:
                # moto terminated it at once: it is shutting down until the delay is over.
                instance._state.name, instance._state.code = "shutting-down", 32
                schedule(("terminate", instance.id), shutdown, lambda i=instance: terminated(i))
            else:
                TERMINATED_AT[instance.id] = time.monotonic()
        for kind, instance, where, bdm, res in held:
            if kind == "vol":
                instance.block_device_mapping[where] = bdm
                att = res.attachment
                schedule(
                    ("vol", res.id), delay, lambda r=res, a=att: finish_volume_detach(backend, r, a)
                )
            else:
                aid = res.attachment_id
                schedule(("eni", res.id), delay, lambda e=res, a=aid: finish_eni_detach(e, a))

    return after


# ---------------------------------------------------------------- CloudWatch Logs
def get_log_events(call):
    """The first `logs_empty_pages` pages of a stream read from its head are empty, each with
    a new forward token; then the stream's events, from its head, as moto serves them."""
    pages = call["conf"]["logs_empty_pages"]
    params = call["params"]
    token = params.get("nextToken")
    if pages <= 0 or (token is None and not params.get("startFromHead")):
        return None
    if token is None:
        served = 0
    elif token in EMPTY_PAGES:
        served = EMPTY_PAGES[token]
    else:
        return None
    if served >= pages:
        rest = {k: v for k, v in params.items() if k != "nextToken"}
        rest["startFromHead"] = True
        return {"rewrite": rest}
    forward = f"f/testbed-empty-{uuid.uuid4().hex}"
    EMPTY_PAGES[forward] = served + 1
    body = {"events": [], "nextForwardToken": forward, "nextBackwardToken": "b/testbed-empty"}
    return Response(json.dumps(body), content_type="application/x-amz-json-1.1")


def age_streams(region, group, seconds):
    """Moves a log group's streams back in time, as if `seconds` had passed."""
    from datetime import timedelta

    from moto.logs.models import logs_backends

    log_group = logs_backends[DEFAULT_ACCOUNT_ID][region].groups.get(group)
    if log_group is None:
        return False
    for stream in log_group.streams.values():
        stream.creation_time = stream.creation_time - timedelta(seconds=seconds)
    return True


# ---------------------------------------------------------------- Auto Scaling
# What the service does on its own, which moto does not: it keeps the desired capacity by
# replacing instances that fail health checks, spreads launches over the group's Availability
# Zones, holds new instances in lifecycle hooks, and picks scale-in victims by its termination
# policy. Group activities run lazily from tick() (every request, the hypervisor's polling and
# a background ticker): lifecycle transitions at once, health checks every
# `asg_health_check_interval` seconds per group.
#
# Instance lifecycle states (docs.aws.amazon.com/autoscaling/ec2/userguide/
# ec2-auto-scaling-lifecycle.html): Pending until EC2 runs the instance, then Pending:Wait
# while a launch hook's action is open, InService; when the group terminates it (scale-in, an
# Unhealthy replacement, TerminateInstanceInAutoScalingGroup), Terminating:Wait while a
# termination hook's action is open (EC2 still runs it), then Terminating:Proceed (or
# Terminating without a hook) until EC2 has terminated it, when it leaves the group. Standby and
# the other states are moto's.
#
# Termination hooks ("How lifecycle hooks work", docs.aws.amazon.com/autoscaling/ec2/userguide/
# lifecycle-hooks-overview.html): "The lifecycle hook puts the instance into a wait state
# (Terminating:Wait) and then performs a custom action. The instance remains in a wait state
# either until you complete the lifecycle action, or until the timeout period ends"; then
# Terminating:Proceed and the instance is terminated. For a termination both results
# terminate: "ABANDON and CONTINUE both allow the instance to terminate" but ABANDON "stops any
# remaining actions, such as other lifecycle hooks" ("Complete a lifecycle action",
# .../completing-lifecycle-hooks.html). Heartbeats restart the timeout
# (RecordLifecycleActionHeartbeat API reference); an action exists only while its instance
# waits, so a stale or unknown token is refused with ValidationError (CompleteLifecycleAction
# API reference: "No active Lifecycle Action found").
#
# The target lifecycle state ("Retrieve the target lifecycle state through instance
# metadata", .../retrieving-target-lifecycle-state-through-imds.html): "When an instance
# prepares to transition to one of the preceding steady states [InService, Terminated,
# Detached, Standby], Amazon EC2 Auto Scaling updates the value of the instance metadata item
# autoscaling/target-lifecycle-state": InService from the launch on, Terminated from the
# moment the group begins to terminate the instance (before its Terminating:Wait). state()
# reports it per instance; the hypervisor serves it to the instance's IMDS.

LAUNCH_HOOK = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATE_HOOK = "autoscaling:EC2_INSTANCE_TERMINATING"
ASG_SCOPE = {}  # (region, group) -> scope that created the group: its settings time the group
NEXT_CHECK = {}  # (region, group) -> monotonic time of the group's next health check
ACTIONS = {}  # instance id -> {hook: open lifecycle action}; an action exists only while it waits
ASG_REGIONS = set()  # regions Auto Scaling (or CloudFormation) was called in
COUNTED = (
    "Pending",
    "Pending:Wait",
    "InService",
    "Terminating",
    "Terminating:Wait",
    "Terminating:Proceed",
)


def leaving(st):
    """The group is terminating it (with or without a termination hook)."""
    return st.lifecycle_state.startswith("Terminating")


def target_lifecycle_state(st):
    """The steady state the instance is transitioning to, as IMDS serves it."""
    state = st.lifecycle_state
    if leaving(st) or state == "Terminated":
        return "Terminated"
    if state in ("Detaching", "Detached"):
        return "Detached"
    if state in ("EnteringStandby", "Standby"):
        return "Standby"
    return "InService"


def hooks_of(group, transition):
    return [
        h
        for h in group.autoscaling_backend.lifecycle_hooks.values()
        if h.auto_scaling_group_name == group.name and h.lifecycle_transition == transition
    ]


def asg_backend(region):
    return autoscaling_backends[DEFAULT_ACCOUNT_ID][region]


def group_conf(group):
    return settings(ASG_SCOPE.get((group.region, group.name), ""))


def find_group_instance(region, instance_id):
    for group in asg_backend(region).autoscaling_groups.values():
        for st in group.instance_states:
            if st.instance.id == instance_id:
                return group, st
    return None, None


def launch_spec(group):
    """What the group launches with now: ("lc", name) or ("lt", template id, version number)."""
    if group.ec2_launch_template is not None:
        lt = group.ec2_launch_template
        version = lt.get_version(getattr(group, "launch_template_version", "$Default"))
        return ("lt", lt.id, int(version.number))
    return ("lc", group.launch_configuration_name)


def replaced_later(st):
    """An unhealthy instance kept in service until its replacement is (launch before
    terminating): it no longer counts toward the desired capacity."""
    return getattr(st, "tb_successor", None) is not None


def counted(group):
    """Instances counting toward the desired capacity. A Terminating one counts until EC2 has
    terminated it: the default instance maintenance policy terminates before it launches. One
    replaced by launching first counts no more from its replacement's launch on."""
    return [
        s
        for s in group.instance_states
        if s.lifecycle_state in COUNTED and not getattr(s, "tb_uncounted", False)
    ]


def launch_before_terminating(group):
    """InstanceMaintenancePolicy MinHealthyPercentage 100 with MaxHealthyPercentage above 100
    is "launch before terminating": a replacement is launched and in service before the
    unhealthy instance is terminated; any other policy, or none, terminates first
    (docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-instance-maintenance-policy.html)."""
    policy = getattr(group, "instance_maintenance_policy", None) or {}
    lo, hi = policy.get("MinHealthyPercentage", -1), policy.get("MaxHealthyPercentage", -1)
    return lo == 100 and hi > 100


def launch_slots(group):
    """(AZ, subnet id or None) the group launches into."""
    if group.vpc_zone_identifier:
        ids = [s for s in group.vpc_zone_identifier.split(",") if s]
        return [(group.ec2_backend.get_subnet(s).availability_zone, s) for s in ids]
    return [(az, None) for az in group.availability_zones]


def pick_slot(group):
    """Where the next instance goes. The service keeps the group balanced: it launches into the
    enabled Availability Zone with the fewest instances of the group (docs.aws.amazon.com/
    autoscaling/ec2/userguide/auto-scaling-benefits.html#arch-AutoScalingMultiAZ), so a
    replacement lands in the zone its predecessor left. Ties: any of them (the service names
    no order)."""
    slots = launch_slots(group)
    zones = {az for az, _ in slots}
    staying = [s for s in counted(group) if not leaving(s)]
    load = dict.fromkeys(zones, 0)
    for s in staying:
        if s.instance.placement.zone in load:
            load[s.instance.placement.zone] += 1
    least = min(load.values())
    return random.choice([slot for slot in slots if load[slot[0]] == least])


def group_tags(group):
    """Tags a new instance carries: the group's PropagateAtLaunch tags, the launch template's
    instance tags, `aws:autoscaling:groupName`, and the `aws:cloudformation:*` tags
    CloudFormation puts on a group it creates (and propagates to its instances)."""
    tags = group.get_propagated_tags()
    for tag in group.tags:
        if tag["Key"].startswith("aws:cloudformation:"):
            tags[tag["Key"]] = tag["Value"]
    return tags


def launch(group, conf, now):
    """Launches one instance of the group (moto's launch, into the slot the service picks)."""
    az, subnet = pick_slot(group)
    saved = (group.vpc_zone_identifier, group.availability_zones)
    before = len(group.instance_states)
    try:
        group.vpc_zone_identifier, group.availability_zones = subnet, [az]
        group.replace_autoscaling_group_instances(1, group_tags(group))
    finally:
        group.vpc_zone_identifier, group.availability_zones = saved
    new = group.instance_states[before:]
    for st in new:
        st.lifecycle_state = "Pending"
        st.tb_spec = launch_spec(group)
        st.tb_hooks = True
    note_instances(group.region, conf)
    return new[0] if new else None


def begin_termination(group, st, conf, now):
    """Takes an instance out of service. With termination hooks it waits in Terminating:Wait,
    one action per hook, while EC2 still runs it (its target lifecycle state is Terminated);
    without, or once EC2 no longer runs it, EC2 terminates it at once."""
    st.tb_successor = None
    ACTIONS.pop(st.instance.id, None)
    hooks = hooks_of(group, TERMINATE_HOOK)
    if hooks and st.instance.state == "running":
        open_actions_for(group, st, hooks, conf, now)
        st.lifecycle_state = "Terminating:Wait"
        return
    st.lifecycle_state = "Terminating"
    ec2_terminate(group.region, [st.instance.id], conf)


def billing_hour_rank(st, now):
    return int(now - FIRST_SEEN.get(st.instance.id, now)) % 3600


def spec_rank(group, st):
    """Outdated configurations go first (default termination policy): for a group using a
    launch template, instances launched from a launch configuration, then from another
    template, then from the oldest version of the current one; for a group using a launch
    configuration, instances launched from another one."""
    spec, current = getattr(st, "tb_spec", None), launch_spec(group)
    if current[0] == "lt":
        if spec is None or spec[0] == "lc":
            return (0, 0)
        if spec[1] != current[1]:
            return (1, 0)
        return (2, spec[2])
    return (0, 0) if spec != current else (1, 0)


def scale_in_pick(group, now):
    """The instance the default termination policy terminates
    (docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-termination-policies.html):
    among the Availability Zones with the most instances and at least one not protected from
    scale in, the unprotected instances with the most outdated configuration, then the one
    closest to the next billing hour, then one at random."""
    staying = [s for s in counted(group) if not leaving(s) and s.health_status == "Healthy"]
    candidates = [s for s in staying if not s.protected_from_scale_in]
    if not candidates:
        return None
    load = {}
    for s in staying:
        load[s.instance.placement.zone] = load.get(s.instance.placement.zone, 0) + 1
    most = max(load[s.instance.placement.zone] for s in candidates)
    pool = [s for s in candidates if load[s.instance.placement.zone] == most]
    oldest = min(spec_rank(group, s) for s in pool)
    pool = [s for s in pool if spec_rank(group, s) == oldest]
    closest = max(billing_hour_rank(s, now) for s in pool)
    return random.choice([s for s in pool if billing_hour_rank(s, now) == closest])


def converge(group, now):
    """Launches or terminates instances until the group holds its desired capacity. An
    instance the group is terminating still counts against a launch (terminate first), and no
    more against a scale-in: it is already going (one scale-in by one terminates one instance,
    however long it waits in a termination hook)."""
    conf = group_conf(group)
    desired = group.desired_capacity or 0
    members = counted(group)
    for _ in range(max(desired - len(members), 0)):
        launch(group, conf, now)
    staying = [s for s in members if not leaving(s)]
    for _ in range(max(len(staying) - desired, 0)):
        victim = scale_in_pick(group, now)
        if victim is None:
            break
        begin_termination(group, victim, conf, now)


def in_grace(group, st, now):
    """Whether the health check grace period shields the instance: it starts when the instance
    enters InService (docs.aws.amazon.com/autoscaling/ec2/userguide/health-check-grace-period.html)."""
    grace = group.health_check_grace_period or 0
    if grace <= 0:
        return False
    since = getattr(st, "tb_in_service", None)
    return since is None or now - since < grace


def to_service(st, now):
    st.lifecycle_state = "InService"
    st.tb_in_service = now


def new_action(hook, conf, now):
    scale = conf["lifecycle_time_scale"]
    timeout = float(hook.heartbeat_timeout)
    return {
        "token": str(uuid.uuid4()),
        "hook": hook.name,
        "transition": hook.lifecycle_transition,
        "timeout": timeout * scale,
        "deadline": now + timeout * scale,
        # The global timeout: 100 times the heartbeat timeout or 48 hours, whichever is less
        # (docs.aws.amazon.com/autoscaling/ec2/userguide/lifecycle-hooks.html).
        "global_deadline": now + min(100 * timeout, 172800.0) * scale,
        "default_result": hook.default_result,
    }


def open_actions_for(group, st, hooks, conf, now):
    ACTIONS[st.instance.id] = {h.name: new_action(h, conf, now) for h in hooks}
    for a in ACTIONS[st.instance.id].values():
        a["group"], a["region"] = group.name, group.region


def finish_action(group, st, hook, result, now):
    """An action ends (completed, or timed out into its hook's DefaultResult). Launch: ABANDON
    ends the launch: the instance is terminated (at the group's next check) and replaced;
    CONTINUE of the last open action puts it in service. Termination: both results let the
    termination proceed; ABANDON ends the other hooks' actions too, CONTINUE waits for them."""
    actions = ACTIONS.get(st.instance.id, {})
    actions.pop(hook, None)
    if st.lifecycle_state == "Terminating:Wait":
        if result == "ABANDON" or not actions:
            ACTIONS.pop(st.instance.id, None)
            st.lifecycle_state = "Terminating:Proceed"
            ec2_terminate(group.region, [st.instance.id], group_conf(group))
        return
    if result == "ABANDON":
        ACTIONS.pop(st.instance.id, None)
        st.lifecycle_state = "Terminating"
    elif not actions:
        ACTIONS.pop(st.instance.id, None)
        to_service(st, now)


def lifecycle_tick(group, now):
    """Launch hooks: an instance EC2 runs enters Pending:Wait with one action per launch hook
    (InService when there is none); an action (of a launch or a termination hook) not
    completed by its heartbeat timeout (or the global timeout) takes its hook's DefaultResult
    (docs.aws.amazon.com/autoscaling/ec2/userguide/lifecycle-hooks-overview.html)."""
    conf = None
    for st in list(group.instance_states):
        if st.lifecycle_state == "Pending" and st.instance.state == "running":
            conf = conf or group_conf(group)
            hooks = hooks_of(group, LAUNCH_HOOK)
            if hooks and getattr(st, "tb_hooks", True):
                open_actions_for(group, st, hooks, conf, now)
                st.lifecycle_state = "Pending:Wait"
            else:
                to_service(st, now)
        elif st.lifecycle_state in ("Pending:Wait", "Terminating:Wait"):
            for hook, a in list(ACTIONS.get(st.instance.id, {}).items()):
                if now >= min(a["deadline"], a["global_deadline"]):
                    finish_action(group, st, hook, a["default_result"], now)


def health_check(group, now):
    """One health check of the group (docs.aws.amazon.com/autoscaling/ec2/userguide/
    ec2-auto-scaling-health-checks.html): an instance EC2 no longer runs (shutting-down,
    terminated, stopping, stopped) is unhealthy; so is an InService one marked Unhealthy
    through SetInstanceHealth. Unhealthy instances are replaced by the instance maintenance
    policy; instances EC2 has terminated leave the group; then the capacity is restored."""
    conf = group_conf(group)
    for st in list(group.instance_states):
        ec2_state = st.instance.state
        if ec2_state == "terminated":
            group.instance_states.remove(st)
            ACTIONS.pop(st.instance.id, None)
            continue
        if st.lifecycle_state in ("Terminating", "Terminating:Proceed"):
            ec2_terminate(group.region, [st.instance.id], conf)  # e.g. an abandoned launch
            continue
        if st.lifecycle_state not in ("Pending", "Pending:Wait", "InService"):
            continue
        if ec2_state in ("shutting-down", "stopping", "stopped"):
            st.health_status = "Unhealthy"
            begin_termination(group, st, conf, now)
        elif st.lifecycle_state == "InService" and st.health_status == "Unhealthy":
            if not launch_before_terminating(group):
                begin_termination(group, st, conf, now)
            elif not replaced_later(st):
                st.tb_uncounted = True
                successor = launch(group, conf, now)
                st.tb_successor = successor.instance.id if successor else None
    # Launch before terminating: the old instance goes once its replacement is in service; a
    # replacement that did not make it is launched again.
    states = {s.instance.id: s for s in group.instance_states}
    for st in list(group.instance_states):
        if not replaced_later(st):
            continue
        successor = states.get(st.tb_successor)
        if successor is not None and successor.lifecycle_state == "InService":
            begin_termination(group, st, conf, now)
        elif successor is None or leaving(successor):
            st.tb_successor = None
            again = launch(group, conf, now)
            st.tb_successor = again.instance.id if again else None
    converge(group, now)


def autoscaling_tick(now):
    for region in list(ASG_REGIONS):
        for group in list(asg_backend(region).autoscaling_groups.values()):
            lifecycle_tick(group, now)
            key = (region, group.name)
            due = NEXT_CHECK.get(key)
            if due is None:
                NEXT_CHECK[key] = now + group_conf(group)["asg_health_check_interval"]
            elif now >= due:
                NEXT_CHECK[key] = now + group_conf(group)["asg_health_check_interval"]
                health_check(group, now)


def _set_desired_capacity(self, new_capacity):
    """moto's, with the service's launches (spread over the zones) and scale-in picks."""
    self.desired_capacity = self.min_size if new_capacity is None else new_capacity
    converge(self, time.monotonic())
    if self.name in self.autoscaling_backend.autoscaling_groups:
        self.autoscaling_backend.update_attached_elbs(self.name)
        self.autoscaling_backend.update_attached_target_groups(self.name)


FakeAutoScalingGroup.set_desired_capacity = _set_desired_capacity
# moto replaces an InService instance the moment EC2 TerminateInstances is called; the
# service notices at its next health check, once EC2 no longer runs the instance.
AutoScalingBackend.notify_terminate_instances = lambda self, instance_ids: None


def member_list(params, prefix):
    """Query-protocol list `prefix.member.N.Field` -> [{Field: value}]."""
    items = {}
    for key, value in params.items():
        m = re.fullmatch(re.escape(prefix) + r"\.member\.(\d+)\.(\w+)", key)
        if m:
            items.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [items[k] for k in sorted(items)]


def maintenance_policy(params):
    lo = params.get("InstanceMaintenancePolicy.MinHealthyPercentage")
    hi = params.get("InstanceMaintenancePolicy.MaxHealthyPercentage")
    if lo is None and hi is None:
        return None
    return {"MinHealthyPercentage": int(lo or -1), "MaxHealthyPercentage": int(hi or -1)}


def check_hook_params(timeout, result):
    """PutLifecycleHook's limits: HeartbeatTimeout 30 to 7200 seconds, DefaultResult CONTINUE
    or ABANDON (API Reference, "PutLifecycleHook")."""
    if timeout is not None and not 30 <= int(timeout) <= 7200:
        raise AwsError(
            "ValidationError",
            f"1 validation error detected: Value '{timeout}' at 'heartbeatTimeout' failed to "
            "satisfy constraint: Member must have value between 30 and 7200",
        )
    if result is not None and result not in ("CONTINUE", "ABANDON"):
        raise AwsError("ValidationError", f"Invalid DefaultResult {result}: CONTINUE or ABANDON")


def create_group(call):
    params, region = call["params"], call["region"]
    name = params.get("AutoScalingGroupName")
    specs = member_list(params, "LifecycleHookSpecificationList")
    for spec in specs:
        check_hook_params(spec.get("HeartbeatTimeout"), spec.get("DefaultResult"))
    ASG_SCOPE[(region, name)] = call["scope"]
    NEXT_CHECK.pop((region, name), None)

    def after(_response):
        group = asg_backend(region).autoscaling_groups.get(name)
        if group is None:
            return
        # CreateAutoScalingGroup's HealthCheckGracePeriod defaults to 0; moto makes both an
        # absent one and an explicit 0 into 300 (`period or 300`).
        group.health_check_grace_period = int(params.get("HealthCheckGracePeriod") or 0)
        policy = maintenance_policy(params)
        if policy is not None:
            group.instance_maintenance_policy = policy
        # Hooks given at creation apply to the group's first instances (still Pending now).
        for spec in specs:
            group.autoscaling_backend.create_lifecycle_hook(
                name=spec.get("LifecycleHookName"),
                as_name=name,
                transition=spec.get("LifecycleTransition"),
                timeout=int(spec["HeartbeatTimeout"]) if spec.get("HeartbeatTimeout") else None,
                result=spec.get("DefaultResult"),
            )

    return after


def check_capacity(group, desired):
    if desired is None:
        return
    desired = int(desired)
    if group.max_size is not None and desired > group.max_size:
        raise AwsError(
            "ValidationError",
            f"New SetDesiredCapacity value {desired} is above max value {group.max_size} for "
            "the AutoScalingGroup.",
        )
    if group.min_size is not None and desired < group.min_size:
        raise AwsError(
            "ValidationError",
            f"New SetDesiredCapacity value {desired} is below min value {group.min_size} for "
            "the AutoScalingGroup.",
        )


def named_group(call):
    name = call["params"].get("AutoScalingGroupName")
    group = asg_backend(call["region"]).autoscaling_groups.get(name)
    if group is None:
        raise AwsError("ValidationError", f"AutoScalingGroup name not found - {name}")
    return group


def update_group(call):
    params = call["params"]
    group = named_group(call)
    lo = params.get("MinSize")
    hi = params.get("MaxSize")
    desired = params.get("DesiredCapacity")
    if desired is not None:
        saved = (group.min_size, group.max_size)
        group.min_size = int(lo) if lo is not None else group.min_size
        group.max_size = int(hi) if hi is not None else group.max_size
        try:
            check_capacity(group, desired)
        finally:
            group.min_size, group.max_size = saved
    policy = maintenance_policy(params)

    def after(_response):
        if policy is not None:
            group.instance_maintenance_policy = policy

    return after


def set_desired_capacity(call):
    check_capacity(named_group(call), call["params"].get("DesiredCapacity"))
    return None


def put_lifecycle_hook(call):
    params = call["params"]
    named_group(call)
    check_hook_params(params.get("HeartbeatTimeout"), params.get("DefaultResult"))
    return None


def set_instance_health(call):
    """SetInstanceHealth: ShouldRespectGracePeriod (default true) leaves an instance in its
    health check grace period Healthy (API Reference, "SetInstanceHealth")."""
    params = call["params"]
    iid, status = params.get("InstanceId"), params.get("HealthStatus")
    group, st = find_group_instance(call["region"], iid)
    if group is None:
        raise AwsError("ValidationError", f"Instance Id not found - No managed instance found for instance ID: {iid}")
    if status not in ("Healthy", "Unhealthy"):
        raise AwsError("ValidationError", "Valid instance health states are: [Healthy, Unhealthy]")
    respect = params.get("ShouldRespectGracePeriod", "true").lower() != "false"
    if status == "Unhealthy" and respect and in_grace(group, st, time.monotonic()):
        return xml_response("SetInstanceHealth", ASG_NS, "", True)
    return None


def attach_instances(call):
    """AttachInstances. The service does not run launch hooks for attached instances ("does
    not apply when you attach or detach instances", docs.aws.amazon.com/autoscaling/ec2/
    userguide/lifecycle-hooks.html); `asg_attach_runs_launch_hooks` (default on) makes an
    attached instance wait in the launch hooks as a launched one would, as the root crate's
    tests stand in for the group's launch by attaching an instance they launched."""
    params, region = call["params"], call["region"]
    ids = [v for k, v in params.items() if k.startswith("InstanceIds.member.")]
    hooks = call["conf"]["asg_attach_runs_launch_hooks"]

    def after(_response):
        now = time.monotonic()
        for iid in ids:
            group, st = find_group_instance(region, iid)
            if st is None:
                continue
            st.tb_spec = None
            st.tb_hooks = hooks
            st.lifecycle_state = "Pending"
            if st.instance.state == "running" and not hooks:
                to_service(st, now)

    return after


def terminate_in_group(call):
    """TerminateInstanceInAutoScalingGroup: the instance is terminated in EC2; a replacement
    follows (after it, as with any replacement) unless ShouldDecrementDesiredCapacity."""
    params = call["params"]
    iid = params.get("InstanceId")
    group, st = find_group_instance(call["region"], iid)
    if group is None:
        raise AwsError("ValidationError", f"Instance Id not found - No managed instance found for instance ID: {iid}")
    decrement = params.get("ShouldDecrementDesiredCapacity", "false").lower() == "true"
    if decrement:
        if (group.desired_capacity or 0) - 1 < (group.min_size or 0):
            raise AwsError(
                "ValidationError",
                f"Currently, desiredSize equals minSize ({group.min_size}). Terminating instance "
                "without replacement will violate group's min size constraint. Either set "
                "shouldDecrementDesiredCapacity flag to false or lower group's min size.",
            )
        group.desired_capacity -= 1
    begin_termination(group, st, group_conf(group), time.monotonic())
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    inner = (
        f"<Activity><ActivityId>{uuid.uuid4()}</ActivityId>"
        f"<AutoScalingGroupName>{group.name}</AutoScalingGroupName>"
        f"<Description>Terminating EC2 instance: {iid}</Description>"
        f"<Cause>At {started} instance {iid} was taken out of service in response to a user "
        f"request.</Cause><StartTime>{started}</StartTime><StatusCode>InProgress</StatusCode>"
        f"<Progress>0</Progress></Activity>"
    )
    return xml_response("TerminateInstanceInAutoScalingGroup", ASG_NS, inner, True)


def lifecycle_call(call, kind):
    """CompleteLifecycleAction / RecordLifecycleActionHeartbeat on an open action, named by
    instance id or by its token (API Reference, "CompleteLifecycleAction"): an action exists
    only while its instance waits; a token of another or of an ended action is refused."""
    params = call["params"]
    backend = asg_backend(call["region"])
    asg, hook = params.get("AutoScalingGroupName"), params.get("LifecycleHookName")
    iid, token = params.get("InstanceId"), params.get("LifecycleActionToken")
    group = backend.autoscaling_groups.get(asg)
    if group is None:
        raise AwsError("ValidationError", f"AutoScalingGroup name not found - {asg}")
    if f"{asg}_{hook}" not in backend.lifecycle_hooks:
        raise AwsError("ValidationError", f"No Lifecycle Hook found with name {hook} for group {asg}")
    if not iid and not token:
        raise AwsError("ValidationError", "Either InstanceId or LifecycleActionToken is required")
    result = params.get("LifecycleActionResult")
    if kind == "complete" and result not in ("CONTINUE", "ABANDON"):
        raise AwsError("ValidationError", "LifecycleActionResult must be CONTINUE or ABANDON")
    if token:
        owner = next(
            (i for i, acts in ACTIONS.items() if acts.get(hook, {}).get("token") == token),
            None,
        )
        action = ACTIONS[owner][hook] if owner else None
        if action is None or action["group"] != asg or (iid and owner != iid):
            raise AwsError("ValidationError", f"No active Lifecycle Action found with token {token}")
        iid = owner
    else:
        action = ACTIONS.get(iid, {}).get(hook)
        if action is None or action["group"] != asg:
            raise AwsError("ValidationError", f"No active Lifecycle Action found with instance ID {iid}")
    now = time.monotonic()
    _, st = find_group_instance(call["region"], iid)
    if kind == "complete":
        finish_action(group, st, hook, result, now)
    else:
        action["deadline"] = min(now + action["timeout"], action["global_deadline"])
    LIFECYCLE.append(
        {
            "kind": kind,
            "auto_scaling_group": asg,
            "hook": hook,
            "instance_id": iid,
            "token": token,
            "result": result,
            "scope": call["scope"],
            "time": time.time(),
            # When the request reached the testbed, before any added latency.
            "arrived": call.get("arrived"),
        }
    )
    action_name = "CompleteLifecycleAction" if kind == "complete" else "RecordLifecycleActionHeartbeat"
    return xml_response(action_name, ASG_NS, "", True)


def open_actions():
    now = time.monotonic()
    return [
        {
            "auto_scaling_group": a["group"],
            "region": a["region"],
            "hook": hook,
            "transition": a["transition"],
            "instance_id": iid,
            "token": a["token"],
            "seconds_left": max(0.0, min(a["deadline"], a["global_deadline"]) - now),
        }
        for iid, acts in ACTIONS.items()
        for hook, a in acts.items()
    ]


# ---------------------------------------------------------------- CloudFormation
def find_stack(region, name):
    backend = cloudformation_backends[DEFAULT_ACCOUNT_ID][region]
    for stack in list(backend.stacks.values()):
        if name in (stack.name, stack.stack_id):
            return stack
    return None


def set_stack_status(stack_id, status):
    for regions in cloudformation_backends.values():
        for backend in regions.values():
            if stack_id in backend.stacks:
                backend.stacks[stack_id].status = status


def iso_duration(text):
    m = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", text or "PT5M")
    if not m:
        return 300
    h, mi, s = (int(x) if x else 0 for x in m.groups())
    return h * 3600 + mi * 60 + s


def create_stack(call):
    def after(response):
        if response.status_code != 200:
            return
        stack = find_stack(call["region"], call["params"].get("StackName"))
        if stack is None:
            return
        waits = {}
        for lid, res in (stack.template_dict.get("Resources") or {}).items():
            signal = ((res or {}).get("CreationPolicy") or {}).get("ResourceSignal")
            if signal is not None:
                # Count and Timeout may be intrinsics (`Count: !Ref BrokerCount`): resolved
                # against the stack's parameters and resources, as CloudFormation does.
                signal = clean_json(signal, stack.resource_map)
                waits[lid] = {
                    "count": int(signal.get("Count", 1)),
                    "success": 0,
                    "deadline": time.monotonic() + iso_duration(signal.get("Timeout")),
                }
        if waits:
            stack.status = "CREATE_IN_PROGRESS"
            CREATION[stack.stack_id] = waits

    return after


def signal_resource(call):
    params = call["params"]
    name, lid = params.get("StackName"), params.get("LogicalResourceId")
    status, unique = params.get("Status"), params.get("UniqueId")
    stack = find_stack(call["region"], name)
    if stack is None:
        raise AwsError("ValidationError", f"Stack with id {name} does not exist")
    if lid not in (stack.template_dict.get("Resources") or {}):
        raise AwsError("ValidationError", f"Resource {lid} does not exist for stack {stack.name}")
    if status not in ("SUCCESS", "FAILURE"):
        raise AwsError("ValidationError", "Status must be SUCCESS or FAILURE")
    if not unique:
        raise AwsError("ValidationError", "UniqueId is required")
    if stack.status not in ("CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS"):
        raise AwsError(
            "ValidationError",
            f"Stack {stack.stack_id} is in {stack.status} state and cannot be signaled",
        )
    SIGNALS.append(
        {
            "stack_id": stack.stack_id,
            "stack_name": stack.name,
            "logical_resource_id": lid,
            "unique_id": unique,
            "status": status,
            "reason": params.get("Reason"),
            "scope": call["scope"],
            "time": time.time(),
        }
    )
    waits = CREATION.get(stack.stack_id)
    if waits is not None and lid in waits:
        if status == "FAILURE":
            stack.status = "CREATE_FAILED"
            CREATION.pop(stack.stack_id, None)
        else:
            waits[lid]["success"] += 1
            if all(w["success"] >= w["count"] for w in waits.values()):
                stack.status = "CREATE_COMPLETE"
                CREATION.pop(stack.stack_id, None)
    return Response(
        f'<SignalResourceResponse xmlns="{CFN_NS}"><ResponseMetadata><RequestId>'
        f"{request_id()}</RequestId></ResponseMetadata></SignalResourceResponse>",
        content_type="text/xml",
    )


HANDLERS = {
    ("ec2", "AttachVolume"): attach_volume,
    ("ec2", "DetachVolume"): detach_volume,
    ("ec2", "AttachNetworkInterface"): attach_eni,
    ("ec2", "DetachNetworkInterface"): detach_eni,
    ("ec2", "TerminateInstances"): terminate_instances,
    ("ec2", "DescribeInstances"): describe_instances,
    ("ec2", "DescribeVolumes"): describe_volumes,
    ("logs", "GetLogEvents"): get_log_events,
    ("autoscaling", "CreateAutoScalingGroup"): create_group,
    ("autoscaling", "UpdateAutoScalingGroup"): update_group,
    ("autoscaling", "SetDesiredCapacity"): set_desired_capacity,
    ("autoscaling", "PutLifecycleHook"): put_lifecycle_hook,
    ("autoscaling", "SetInstanceHealth"): set_instance_health,
    ("autoscaling", "AttachInstances"): attach_instances,
    ("autoscaling", "TerminateInstanceInAutoScalingGroup"): terminate_in_group,
    ("autoscaling", "CompleteLifecycleAction"): lambda c: lifecycle_call(c, "complete"),
    ("autoscaling", "RecordLifecycleActionHeartbeat"): lambda c: lifecycle_call(c, "heartbeat"),
    ("cloudformation", "CreateStack"): create_stack,
    ("cloudformation", "SignalResource"): signal_resource,
}


# ---------------------------------------------------------------- inspection
def tags(backend, resource_id):
    return dict(backend.tags.get(resource_id, {}))


def state(region, vpc_id):
    backend = ec2(region)
    targets = {
        st.instance.id: target_lifecycle_state(st)
        for group in asg_backend(region).autoscaling_groups.values()
        for st in group.instance_states
    }
    instances, ids = [], set()
    for instance in backend.all_instances():
        if instance.vpc_id != vpc_id:
            continue
        ids.add(instance.id)
        primary = instance.nics.get(0)
        instances.append(
            {
                "id": instance.id,
                "state": instance.state,
                "az": instance.placement.zone,
                "subnet_id": instance.subnet_id,
                "private_ip": instance.private_ip,
                "image_id": instance.image_id,
                "mac": primary.mac_address if primary else None,
                "primary_eni": primary.id if primary else None,
                "instance_type": instance.instance_type,
                "root_device_name": instance.root_device_name,
                "tags": tags(backend, instance.id),
                # None outside an Auto Scaling group: IMDS answers 404 for the item then.
                "target_lifecycle_state": targets.get(instance.id),
            }
        )
    enis = []
    for eni in backend.enis.values():
        if eni.subnet.vpc_id != vpc_id:
            continue
        att = eni.attachment
        enis.append(
            {
                "id": eni.id,
                "mac": eni.mac_address,
                "subnet_id": eni.subnet.id,
                "cidr": eni.subnet.cidr_block,
                "az": eni.subnet.availability_zone,
                "private_ips": [eni.private_ip_address]
                + [
                    a["PrivateIpAddress"]
                    for a in eni.private_ip_addresses
                    if a.get("PrivateIpAddress") != eni.private_ip_address
                ],
                "attachment": None
                if att is None
                else {
                    "instance_id": att.instance_id,
                    "device_index": att.device_index,
                    "status": att.status,
                },
                "tags": tags(backend, eni.id),
            }
        )
    volumes = []
    for volume in backend.volumes.values():
        att = volume.attachment
        if att is None or att.instance.id not in ids:
            continue
        volumes.append(
            {
                "id": volume.id,
                "az": volume.zone.name,
                "size": volume.size,
                "attachment": {
                    "instance_id": att.instance.id,
                    "device": att.device,
                    "status": att.status,
                },
            }
        )
    return {"instances": instances, "enis": enis, "volumes": volumes}


def control(req):
    path = req.path[len("/_testbed/"):]
    with LOCK:
        tick()
        if path.startswith("scope/") and req.method == "POST":
            scope = path[len("scope/"):]
            conf = json.loads(req.get_data() or b"{}")
            unknown = set(conf) - set(DEFAULTS)
            if unknown:
                return Response(f"unknown settings {sorted(unknown)}", status=400)
            SCOPES.setdefault(scope, {}).update(conf)
            if "fault_after_limit" in conf:
                FAULTS_AFTER.pop(scope, None)
            return Response(json.dumps(settings(scope)), content_type="application/json")
        if path == "signals":
            return Response(json.dumps(SIGNALS), content_type="application/json")
        if path == "lifecycle":
            return Response(json.dumps(LIFECYCLE), content_type="application/json")
        if path == "lifecycle-actions":
            return Response(json.dumps(open_actions()), content_type="application/json")
        if path == "state":
            # `since` (a generation from an earlier answer) and `wait` (seconds): answer once
            # something may have changed since, or once `wait` passed, or when a scheduled
            # transition falls due, whichever comes first.
            since = req.args.get("since", type=int)
            if since is not None and since == GENERATION[0]:
                until = time.monotonic() + min(float(req.args.get("wait", "0")), 1.0)
                due = [d for d, _ in PENDING.values()]
                if due:
                    until = min(until, min(due))
                while GENERATION[0] == since and time.monotonic() < until:
                    CHANGED.wait(until - time.monotonic())
                tick()
            body = state(req.args.get("region", "us-east-1"), req.args.get("vpc"))
            body["generation"] = GENERATION[0]
            return Response(json.dumps(body), content_type="application/json")
        if path == "stack-status" and req.method == "POST":
            conf = json.loads(req.get_data())
            stack = find_stack(conf["region"], conf["stack"])
            if stack is None:
                return Response("no such stack", status=404)
            stack.status = conf["status"]
            CREATION.pop(stack.stack_id, None)
            return Response("{}", content_type="application/json")
        if path == "age-streams" and req.method == "POST":
            conf = json.loads(req.get_data())
            if not age_streams(conf.get("region", "us-east-1"), conf["group"], conf["seconds"]):
                return Response("no such log group", status=404)
            return Response("{}", content_type="application/json")
        if path == "stats":
            return Response(json.dumps(STATS), content_type="application/json")
        if path == "health":
            return Response("ok")
    return Response("unknown testbed endpoint", status=404)


class Testbed:
    def __init__(self):
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ, start_response):
        req = Request(environ)
        if req.path.startswith("/_testbed/"):
            try:
                response = control(req)
            except Exception:  # a testbed bug: say so loudly, in the log and the reply
                import traceback

                trace = traceback.format_exc()
                sys.stderr.write(trace)
                response = Response(trace, status=500)
            return response(environ, start_response)
        arrived = time.time()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        service, region, scope, action, params, protocol = parse_call(environ, body)
        conf = settings(scope)
        if conf["latency_ms"]:
            time.sleep(conf["latency_ms"] / 1000.0)
        fault = None
        if action in (conf.get("denied_actions") or []):
            fault = denied_error(protocol, service, action)
        if fault is None:
            fault = fault_for(conf, action, protocol, service)
        if fault is None and not bucket_allows(scope, conf, action):
            fault = throttle_error(protocol, service)
        if fault is not None:
            return error_response(fault, protocol)(environ, start_response)
        call = {"region": region, "scope": scope, "params": params, "conf": conf,
                "arrived": arrived}
        if (
            action in (conf.get("fault_after_actions") or [])
            and random.random() < conf.get("fault_after_rate", 0.0)
            and fault_after_allowed(scope, conf)
        ):
            # Applied, then the reply is lost: the caller sees a 5xx.
            captured = []
            self.serve(environ, lambda status, headers, exc=None: captured.append(status),
                       call, service, action, protocol)
            return error_response(server_error(conf, protocol, service), protocol)(
                environ, start_response
            )
        return self.serve(environ, start_response, call, service, action, protocol)

    def serve(self, environ, start_response, call, service, action, protocol):
        with LOCK:
            began = time.monotonic()
            try:
                return self.serve_locked(environ, start_response, call, service, action, protocol)
            finally:
                entry = STATS.setdefault(call["scope"], {}).setdefault(action, [0, 0.0])
                entry[0] += 1
                entry[1] += time.monotonic() - began
                if not action.startswith(("Describe", "Get", "List")):
                    GENERATION[0] += 1
                    CHANGED.notify_all()

    def serve_locked(self, environ, start_response, call, service, action, protocol):
        if True:
            if service in ("autoscaling", "cloudformation"):
                ASG_REGIONS.add(call["region"])
            tick()
            after = None
            handler = HANDLERS.get((service, action))
            if handler is not None:
                try:
                    result = handler(call)
                except AwsError as err:
                    return error_response(err, protocol)(environ, start_response)
                if isinstance(result, Response):
                    return result(environ, start_response)
                if isinstance(result, dict) and "rewrite" in result:
                    body = json.dumps(result["rewrite"]).encode()
                    environ["wsgi.input"] = io.BytesIO(body)
                    environ["CONTENT_LENGTH"] = str(len(body))
                else:
                    after = result
            app_iter, status, headers = run_wsgi_app(self.moto, environ, buffered=True)
            response = Response(app_iter, status=status, headers=headers)
            if after is not None and response.status_code == 200:
                after(response)
            if action in LAUNCHING:
                note_instances(call["region"], call["conf"])
        return response(environ, start_response)


def ticker():
    """Time passes without callers too: group health checks and hook timeouts are due whether
    or not anyone calls."""
    while True:
        time.sleep(0.1)
        try:
            with LOCK:
                tick()
        except Exception:  # a testbed bug: say so loudly in the log, keep ticking
            import traceback

            sys.stderr.write(traceback.format_exc())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sys.stderr.write(f"awsbed listening on {args.host}:{args.port}\n")
    # One thread per request, all under one GIL: with the default 5 ms switch interval a
    # short answer (the hypervisor's state, a token) waits behind another request's
    # rendering for 5 ms at each hand-over; 0.5 ms lets the short ones through.
    sys.setswitchinterval(0.0005)
    threading.Thread(target=ticker, name="ticker", daemon=True).start()
    run_simple(
        args.host,
        args.port,
        Testbed(),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
