"""Generate the Envoy bootstrap for the No Brains ML front proxy.

One listener serves both native gRPC (h2c, passed through untouched) and REST/JSON
(HTTP/1.1 or h2, translated by ``envoy.filters.http.grpc_json_transcoder``) on the same
port. Routing is on the *gRPC* path (``/nbml.v1.AuthService/...``): the transcoder
rewrites a REST request's path to the gRPC one and clears the route cache before the
router runs.

HTTP filters, in order: ``buffer`` (REST body limit, see below) -> ``grpc_json_transcoder``
-> ``local_ratelimit`` (log-in and sign-up attempts, see below) -> ``router``.

Log-in and sign-up attempts (:data:`RATE_LIMITED_METHODS`) are limited per client address
to ``login_attempts_per_minute`` each (a token bucket of that many, refilled over a
minute), by Envoy's ``local_ratelimit`` filter on their exact gRPC-path routes. The
filter runs after the transcoder, so REST and native gRPC attempts share one bucket per
address; each address gets its own bucket (a wildcard ``remote_address`` descriptor, up
to :data:`MAX_LIMITED_CLIENTS` addresses at a time, least recently seen dropped first).
``use_remote_address`` makes that the connection's peer, not a client-sent header. A
limited attempt gets HTTP 429 over REST and ``RESOURCE_EXHAUSTED`` over gRPC. The
buckets are per Envoy process.

Request size limits (what was chosen and why):

* REST/JSON bodies: at most ``max_request_bytes`` (default 4 MiB), answered with
  ``413 Payload Too Large`` by Envoy. The transcoder's own ``max_request_body_size``
  cannot do this: it only bounds the *not yet converted* JSON it holds, and it converts
  as the body streams in, so a 5 MiB body passes it (measured). So the
  ``envoy.filters.http.buffer`` filter sits in front of the transcoder, but only for
  REST: every gRPC route disables it per route (``BufferPerRoute.disabled``), and a
  REST request is matched on its REST path, before the transcoder rewrites it, by the
  catch-all route where the buffer filter stays on. Native gRPC is therefore never
  buffered (streaming keeps working).
* REST client-streaming methods (``UploadDataset``, ``StreamPredict``: a JSON array of
  messages) are exempt from the whole-body limit (their REST paths get routes with the
  buffer filter disabled); the transcoder streams them message by message.
* Native gRPC: Envoy does not look inside gRPC frames, so a single message's size is
  enforced by the services (``grpc.max_receive_message_length``, 8 MiB in
  ``nbml_server.platform.server``), which answer ``RESOURCE_EXHAUSTED``. Uploads are
  sent as 1 MiB chunks, well inside the limit, and 4 MiB messages pass.
* ``max_response_bytes`` (default 16 MiB) is the transcoder's ``max_response_body_size``:
  how much of a unary gRPC response it may buffer to turn it into JSON.
* ``per_connection_buffer_limit_bytes`` (listener and clusters, default 1 MiB) is only a
  flow-control watermark: above it Envoy stops reading from the sender until the other
  side drains. It rejects nothing.

Timeouts: unary routes get ``route_timeout_s`` (120 s; a client's ``grpc-timeout`` is
honoured up to that). The long-running methods (:data:`LONG_RUNNING_METHODS`: the
streaming RPCs plus ``BatchPredict``), reflection and health are routed on their exact
gRPC path with ``timeout: 0s`` (no overall limit) and an idle timeout instead.

Replicas: a service may have several hosts (e.g. predictor processes). Each is health
checked, one that Envoy cannot reach is ejected on the second failure in a row
(``outlier_detection``), and idempotent calls (:data:`IDEMPOTENT_METHODS`: reads and
``Predict``) that fail on one, even mid-call, are retried on another
(``previous_hosts`` retry predicate), so a replica that dies loses no such call.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from google.api import annotations_pb2

from deploy.envoy.descriptor_set import ROOT_FILES, SERVICE_NAMES, SERVICES, write_descriptor_set

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "LONG_RUNNING_METHODS",
    "PASSTHROUGH_SERVICES",
    "IDEMPOTENT_METHODS",
    "REST_STREAMING_PATHS",
    "DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE",
    "RATE_LIMITED_METHODS",
    "generate_config",
    "write_config",
    "main",
]

MiB = 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 4 * MiB
DEFAULT_MAX_RESPONSE_BYTES = 16 * MiB
DEFAULT_CONNECTION_BUFFER_BYTES = 1 * MiB
DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE = 10
#: Client addresses with a bucket at a time; beyond it the least recently seen one's
#: bucket is dropped (and its count forgotten).
MAX_LIMITED_CLIENTS = 100_000

#: gRPC paths limited per client address: guessing passwords, creating accounts in bulk.
RATE_LIMITED_METHODS: tuple[str, ...] = (
    "/nbml.v1.AuthService/LogIn",
    "/nbml.v1.AuthService/SignUp",
)

#: gRPC services that are not transcoded but routed (native gRPC only) to the auth
#: upstream. Every service process registers health and reflection for all five.
PASSTHROUGH_SERVICES: tuple[str, ...] = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
    "grpc.health.v1.Health",
)

_BUFFER_FILTER = "envoy.filters.http.buffer"
_TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
_RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
_RATE_LIMIT_TYPE = ("type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3."
                    "LocalRateLimit")


def _path_template_regex(template: str) -> str:
    """RE2 regex for a google.api.http path template (``/v1/{name=datasets/*}:x``)."""

    def segment_regex(pattern: str) -> str:
        parts = []
        for seg in pattern.split("/"):
            if seg == "**":
                parts.append(".+")
            elif seg == "*":
                parts.append("[^/]+")
            else:
                parts.append(re.escape(seg))
        return "/".join(parts)

    out, pos = [], 0
    for match in re.finditer(r"\{([^}=]+)(?:=([^}]*))?\}", template):
        out.append(segment_regex(template[pos:match.start()]))
        out.append(segment_regex(match.group(2) or "*"))
        pos = match.end()
    out.append(segment_regex(template[pos:]))
    return "^" + "".join(out) + "$"


def _method_tables() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(long-running gRPC paths, idempotent unary gRPC paths, REST path regexes of
    client-streaming methods), read from the descriptors so a new streaming RPC cannot
    be forgotten."""
    long_running: list[str] = []
    idempotent: list[str] = []
    rest_streaming: list[str] = []
    for fd in ROOT_FILES:
        for service in fd.services_by_name.values():
            if service.full_name not in SERVICES:
                continue
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                streaming = method.client_streaming or method.server_streaming
                # BatchPredict is unary but may run for minutes over a whole data set.
                if streaming or method.name == "BatchPredict":
                    long_running.append(path)
                elif method.name == "Predict" or method.name.startswith(
                        ("Get", "List", "Preview")):
                    idempotent.append(path)
                if method.client_streaming:
                    rule = method.GetOptions().Extensions[annotations_pb2.http]
                    for binding in (rule, *rule.additional_bindings):
                        kind = binding.WhichOneof("pattern")
                        if kind and kind != "custom":
                            rest_streaming.append(_path_template_regex(getattr(binding, kind)))
    return tuple(long_running), tuple(idempotent), tuple(rest_streaming)


#: gRPC paths routed with ``timeout: 0s`` and an idle timeout: UploadDataset,
#: DownloadDataset, DownloadModel, WatchTrainingJob, StreamPredict, BatchPredict.
#: IDEMPOTENT_METHODS: gRPC paths of the unary reads and Predict, retried on another
#: replica when one fails or dies mid-call.
#: REST_STREAMING_PATHS: regexes of the REST paths of client-streaming methods.
LONG_RUNNING_METHODS, IDEMPOTENT_METHODS, REST_STREAMING_PATHS = _method_tables()

_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)% '
    '%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% grpc=%GRPC_STATUS_NUMBER% %RESPONSE_FLAGS% "
    "%BYTES_RECEIVED%>%BYTES_SENT% %DURATION%ms up=%UPSTREAM_CLUSTER% "
    "rid=%REQ(X-REQUEST-ID)%\n"
)

_NO_BUFFER = {_BUFFER_FILTER: {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
    "disabled": True,
}}


def _duration(seconds: float) -> str:
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}s"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cluster(short: str, hosts: Sequence[tuple[str, int]], *, connect_timeout_s: float,
             health_interval_s: float, buffer_bytes: int) -> dict[str, Any]:
    if all(_is_ip(host) for host, _ in hosts):
        kind = "STATIC"  # needs IP literals
    else:
        # LOGICAL_DNS takes exactly one endpoint; STRICT_DNS resolves each name.
        kind = "LOGICAL_DNS" if len(hosts) == 1 else "STRICT_DNS"
    cluster: dict[str, Any] = {
        "name": short,
        "type": kind,
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": _duration(connect_timeout_s),
        # A replica that is slow (loading a model) gets fewer requests than round robin
        # would give it.
        "lb_policy": "LEAST_REQUEST",
        "per_connection_buffer_limit_bytes": buffer_bytes,
        "load_assignment": {
            "cluster_name": short,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host,
                                                             "port_value": int(port)}}}}
                for host, port in hosts]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                }},
            },
        },
        # Each host is checked on its own.
        "health_checks": [{
            "timeout": "1s",
            "interval": _duration(health_interval_s),
            # Without this a cluster that has seen no traffic yet is checked only every
            # 60 s, so a service that was down at start would look down for a minute.
            "no_traffic_interval": _duration(health_interval_s),
            "unhealthy_interval": _duration(health_interval_s),
            "interval_jitter": "0.2s",
            "unhealthy_threshold": 3,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": SERVICE_NAMES[short]},
        }],
        # Panic mode (sending to every host, healthy or not) only when no host is
        # healthy: one live replica takes all the traffic, and a lone host that failed
        # its checks is still tried rather than the service blackholed (a failed check
        # then only shows up in /clusters and stats). The default threshold, 50 %, would
        # send traffic to dead replicas as soon as more than half of them are down.
        "common_lb_config": {"healthy_panic_threshold": {"value": 1.0}},
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT",
            "max_connections": 256,
            "max_pending_requests": 1024,
            "max_requests": 1024,
            "max_retries": 8,
        }]},
    }
    if len(hosts) > 1:
        cluster["outlier_detection"] = _outlier_detection(len(hosts))
    return cluster


def _outlier_detection(host_count: int) -> dict[str, Any]:
    """Passive health checking between active checks: a replica that Envoy cannot reach
    (refused, reset, timed out) or that answers UNAVAILABLE / DEADLINE_EXCEEDED
    repeatedly is taken out of rotation at once, without waiting for three failed
    health checks; its next passed health check brings it back."""
    return {
        # Connection-level failures are counted apart from the replica's answers...
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 2,
        # ...and of its answers only gateway failures (UNAVAILABLE, DEADLINE_EXCEEDED)
        # count: other errors (a model that fails, INTERNAL) are the same on every
        # replica, and ejecting the one that reported them would help nobody.
        "consecutive_gateway_failure": 5,
        "enforcing_consecutive_gateway_failure": 100,
        "enforcing_consecutive_5xx": 0,
        "interval": "1s",
        "base_ejection_time": "5s",
        # Never eject the last replica (Envoy enforces the percentage strictly).
        "max_ejection_percent": 100 * (host_count - 1) // host_count,
    }


def _retry_policy(retry_on: str) -> dict[str, Any]:
    return {
        "retry_on": retry_on,
        "num_retries": 2,
        "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
        # A retry goes to another replica when there is one: Envoy picks again (up to
        # host_selection_retry_max_attempts times) when it picked a host already tried.
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                      "previous_hosts.v3.PreviousHostsPredicate"},
        }],
        "host_selection_retry_max_attempts": 5,
    }


_RATE_LIMITED_MESSAGE = ("too many log-in or sign-up attempts from this address; "
                         "try again in a minute")
# Matched on the status: the rate-limited response flag (RL) did not match here.
_RATE_LIMITED = {"status_code_filter": {"comparison": {"op": "EQ", "value": {
    "default_value": 429, "runtime_key": "nbml.rate_limited_status"}}}}
#: A limited attempt's reply: over REST (the transcoder set x-envoy-original-path) a JSON
#: google.rpc.Status like every other error; over gRPC the message as grpc-message.
_RATE_LIMITED_REPLIES = [
    {"filter": {"and_filter": {"filters": [_RATE_LIMITED, {"header_filter": {"header": {
        "name": "x-envoy-original-path", "present_match": True}}}]}},
     "body_format_override": {"json_format": {
         "code": 8, "message": _RATE_LIMITED_MESSAGE,  # 8: RESOURCE_EXHAUSTED
         "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                      "reason": "TOO_MANY_ATTEMPTS", "domain": "nbml.dev"}]}}},
    {"filter": _RATE_LIMITED, "body": {"inline_string": _RATE_LIMITED_MESSAGE}},
]


def _per_client_rate_limit(attempts_per_minute: int) -> dict[str, Any]:
    """The local_ratelimit configuration of one route: a bucket per client address."""
    bucket = {"max_tokens": attempts_per_minute, "tokens_per_fill": attempts_per_minute,
              "fill_interval": "60s"}
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "@type": _RATE_LIMIT_TYPE,
        "stat_prefix": "login_attempts",
        # Envoy requires a route's own bucket; it is used only by a request that matches
        # no descriptor, and every request has a remote address.
        "token_bucket": bucket,
        "always_consume_default_token_bucket": False,
        # No value: a wildcard, one bucket for each address seen.
        "descriptors": [{"entries": [{"key": "remote_address"}], "token_bucket": bucket}],
        "max_dynamic_descriptors": MAX_LIMITED_CLIENTS,
        "filter_enabled": always,
        "filter_enforced": always,
        # gRPC clients see RESOURCE_EXHAUSTED (retry later), not UNAVAILABLE (retry now).
        "rate_limited_as_resource_exhausted": True,
    }


def _routes(*, route_timeout_s: float, streaming_idle_timeout_s: float,
            login_attempts_per_minute: int) -> list[dict[str, Any]]:
    short_of = {full: short for short, full in SERVICE_NAMES.items()}
    unary = {
        "timeout": _duration(route_timeout_s),
        "max_stream_duration": {"grpc_timeout_header_max": _duration(route_timeout_s)},
    }
    long = {
        "timeout": "0s",
        "idle_timeout": _duration(streaming_idle_timeout_s),
        # Honour the client's grpc-timeout without a cap (0s = unlimited).
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
    }
    routes: list[dict[str, Any]] = []

    # 0. Log-in and sign-up: limited per client address (matched after transcoding, so
    #    REST and gRPC attempts count alike). Not retried: an attempt is not idempotent.
    for path in RATE_LIMITED_METHODS:
        routes.append({
            "name": f"limited:{path}",
            "match": {"path": path},
            "route": {"cluster": short_of[path.split("/")[1]], **unary,
                      "rate_limits": [{"actions": [{"remote_address": {}}]}]},
            "typed_per_filter_config": {
                **_NO_BUFFER,
                _RATE_LIMIT_FILTER: _per_client_rate_limit(login_attempts_per_minute)},
        })

    # 1. Long-running methods: exact gRPC path, no overall timeout, idle timeout only.
    #    Streams are never retried. BatchPredict, unary but minutes long, is retried only
    #    when it never reached a replica (refused connection or stream): a retry after a
    #    reset could redo minutes of work.
    for path in LONG_RUNNING_METHODS:
        route = {"cluster": short_of[path.split("/")[1]], **long}
        if path.endswith("/BatchPredict"):
            route["retry_policy"] = _retry_policy("connect-failure,refused-stream")
        routes.append({
            "name": f"long:{path}",
            "match": {"path": path},
            "route": route,
            "typed_per_filter_config": _NO_BUFFER,
        })

    # 2. Idempotent methods (reads, Predict): retried when the upstream is unreachable,
    #    says UNAVAILABLE, or goes away mid-call (reset: a replica killed while it
    #    answered). Creates, updates and deletes (the prefix routes below) are not.
    for path in IDEMPOTENT_METHODS:
        routes.append({
            "name": f"idempotent:{path}",
            "match": {"path": path},
            "route": {
                "cluster": short_of[path.split("/")[1]],
                **unary,
                "retry_policy": _retry_policy(
                    "unavailable,connect-failure,refused-stream,reset"),
            },
            "typed_per_filter_config": _NO_BUFFER,
        })

    # 3. Everything else of a service, by gRPC path prefix.
    for short, full in SERVICE_NAMES.items():
        routes.append({
            "name": f"svc:{full}",
            "match": {"prefix": f"/{full}/"},
            "route": {"cluster": short, **unary},
            "typed_per_filter_config": _NO_BUFFER,
        })

    # 4. Health and reflection (native gRPC only) go to the auth process. Reflection is
    #    a bidirectional stream and Health/Watch a server stream: no overall timeout.
    for full in PASSTHROUGH_SERVICES:
        routes.append({
            "name": f"aux:{full}",
            "match": {"prefix": f"/{full}/"},
            "route": {"cluster": "auth", **long},
            "typed_per_filter_config": _NO_BUFFER,
        })

    # 5. REST paths of client-streaming methods. Only matched *before* transcoding (the
    #    transcoder then rewrites the path to the gRPC one and the router re-matches on
    #    the routes above); they exist to switch the whole-body limit off for streams.
    for regex in REST_STREAMING_PATHS:
        routes.append({
            "name": f"rest-stream:{regex}",
            "match": {"safe_regex": {"regex": regex}},
            "direct_response": {"status": 404, "body": {
                "inline_string": "No such method: use POST with a JSON body.\n"}},
            "typed_per_filter_config": _NO_BUFFER,
        })

    # 6. Catch-all. REST requests match it before transcoding (so the buffer filter's body
    #    limit applies to them); anything that is neither a known gRPC path nor REST that
    #    the transcoder understood ends here with a clear 404 instead of a hang.
    routes.append({
        "name": "not-found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {
            "inline_string": "Not found: no such API path.\n"}},
    })
    return routes


def generate_config(
    *,
    upstreams: Mapping[str, Sequence[tuple[str, int]]],
    listen_port: int,
    admin_port: int,
    descriptor_path: str,
    listen_address: str = "127.0.0.1",
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    connection_buffer_bytes: int = DEFAULT_CONNECTION_BUFFER_BYTES,
    route_timeout_s: float = 120.0,
    stream_idle_timeout_s: float = 300.0,
    streaming_idle_timeout_s: float = 3600.0,
    connect_timeout_s: float = 1.0,
    health_check_interval_s: float = 2.0,
    max_downstream_connections: int = 10_000,
    reject_unknown_method: bool = True,
    login_attempts_per_minute: int = DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
) -> dict[str, Any]:
    """The Envoy v3 bootstrap, as a plain dict (dump it as YAML or JSON).

    ``upstreams`` maps each short name (``auth``, ``dataset``, ``trainer``,
    ``evaluator``, ``predictor``) to its replicas' ``(host, port)``, at least one each;
    all five are required. Requests are balanced over a service's replicas (least
    request), each is health checked, and one that fails is ejected (see
    :func:`_outlier_detection`) while idempotent calls are retried on another.
    ``descriptor_path`` is where the descriptor set (:func:`build_descriptor_set`) is,
    or will be, written; Envoy reads it at start-up. ``max_request_bytes`` caps
    REST/JSON request bodies (413 above it); ``login_attempts_per_minute`` the log-in
    and sign-up attempts of one client address (429 / RESOURCE_EXHAUSTED above it); see
    the module docstring for the others.
    """
    missing = set(SERVICE_NAMES) - set(upstreams)
    unknown = set(upstreams) - set(SERVICE_NAMES)
    if missing or unknown:
        raise ValueError(
            f"upstreams must name exactly {sorted(SERVICE_NAMES)}; "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    for short, hosts in upstreams.items():
        if not hosts:
            raise ValueError(f"upstream {short} has no host")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"upstream {short} lists a host twice: {list(hosts)}")
    if max_request_bytes <= 0 or max_response_bytes <= 0:
        raise ValueError("size limits must be positive")
    if login_attempts_per_minute <= 0:
        raise ValueError(
            f"login_attempts_per_minute must be positive, got {login_attempts_per_minute}")

    transcoder: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "proto_descriptor": str(descriptor_path),
        "services": list(SERVICES),
        "print_options": {
            "add_whitespace": False,
            "always_print_primitive_fields": True,
            "always_print_enums_as_ints": False,
            "preserve_proto_field_names": True,
        },
        "auto_mapping": False,
        "convert_grpc_status": True,
        "ignore_unknown_query_parameters": True,
        # Bounds only the transcoder's unconverted input, not the body (see docstring).
        "max_request_body_size": max_request_bytes,
        "max_response_body_size": max_response_bytes,
    }
    if reject_unknown_method:
        # REST paths that map to no method get the transcoder's 404 ("Could not resolve
        # /v1/x to a method") instead of going to the router. Requests with content-type
        # application/grpc are never transcoded, so native gRPC (incl. health and
        # reflection) is unaffected (tested).
        transcoder["request_validation_options"] = {"reject_unknown_method": True}

    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "nbml_ingress",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "generate_request_id": True,
        "always_set_request_id_in_response": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "stream_idle_timeout": _duration(stream_idle_timeout_s),
        "request_headers_timeout": "10s",
        "common_http_protocol_options": {"idle_timeout": "3600s"},
        "http2_protocol_options": {
            "max_concurrent_streams": 256,
            "initial_stream_window_size": 1 * MiB,
            "initial_connection_window_size": 4 * MiB,
        },
        "local_reply_config": {"mappers": _RATE_LIMITED_REPLIES},
        "access_log": [{
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"text_format_source": {"inline_string": _ACCESS_LOG_FORMAT}},
            },
        }],
        "route_config": {
            "name": "nbml_routes",
            "virtual_hosts": [{
                "name": "nbml",
                "domains": ["*"],
                "routes": _routes(route_timeout_s=route_timeout_s,
                                  streaming_idle_timeout_s=streaming_idle_timeout_s,
                                  login_attempts_per_minute=login_attempts_per_minute),
            }],
        },
        "http_filters": [
            {"name": _BUFFER_FILTER, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": max_request_bytes}},
            {"name": _TRANSCODER_FILTER, "typed_config": transcoder},
            # Only routes with a configuration of their own are limited.
            {"name": _RATE_LIMIT_FILTER, "typed_config": {
                "@type": _RATE_LIMIT_TYPE, "stat_prefix": "login_attempts"}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }

    clusters = [
        _cluster(short, upstreams[short], connect_timeout_s=connect_timeout_s,
                 health_interval_s=health_check_interval_s,
                 buffer_bytes=connection_buffer_bytes)
        for short in SERVICE_NAMES
    ]

    return {
        "node": {"id": "nbml-envoy", "cluster": "nbml"},
        "admin": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": int(admin_port)}}},
        "static_resources": {
            "listeners": [{
                "name": "nbml_ingress",
                "address": {"socket_address": {
                    "address": listen_address, "port_value": int(listen_port)}},
                "per_connection_buffer_limit_bytes": connection_buffer_bytes,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": max_downstream_connections,
                },
            }],
        },
    }


def write_config(path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Write :func:`generate_config` (same keyword arguments) to ``path`` as YAML."""
    config = generate_config(**kwargs)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh, sort_keys=False, default_flow_style=False, width=1000)
    os.replace(tmp, path)


def _parse_upstream(text: str) -> tuple[str, tuple[str, int]]:
    try:
        name, address = text.split("=", 1)
        host, port = address.rsplit(":", 1)
        return name.strip(), (host.strip("[]"), int(port))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=HOST:PORT (e.g. auth=127.0.0.1:50051), got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m deploy.envoy.generate_config --upstream auth=127.0.0.1:50051 ...
    --listen-port 8080 --admin-port 9901 --descriptor nbml.pb --output envoy.yaml``;
    ``--upstream predictor=...`` once per replica."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.envoy.generate_config",
        description="Write the Envoy bootstrap (YAML) and the descriptor set it loads.")
    parser.add_argument("--upstream", action="append", type=_parse_upstream, required=True,
                        metavar="NAME=HOST:PORT",
                        help=f"once per replica of each service: {', '.join(SERVICE_NAMES)}")
    parser.add_argument("--listen-address", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--descriptor", required=True, metavar="OUT.pb",
                        help="where to write the descriptor set (its absolute path goes "
                             "into the config)")
    parser.add_argument("--output", required=True, metavar="envoy.yaml")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--max-response-bytes", type=int, default=DEFAULT_MAX_RESPONSE_BYTES)
    parser.add_argument("--login-attempts-per-minute", type=int,
                        default=DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
                        help="log-in and sign-up attempts per client address and minute")
    args = parser.parse_args(argv)

    upstreams: dict[str, list[tuple[str, int]]] = {}
    for name, address in args.upstream:
        upstreams.setdefault(name, []).append(address)
    descriptor = os.path.abspath(args.descriptor)
    options = dict(upstreams=upstreams, listen_port=args.listen_port,
                   admin_port=args.admin_port, descriptor_path=descriptor,
                   listen_address=args.listen_address,
                   max_request_bytes=args.max_request_bytes,
                   max_response_bytes=args.max_response_bytes,
                   login_attempts_per_minute=args.login_attempts_per_minute)
    try:
        generate_config(**options)
    except ValueError as exc:
        parser.error(str(exc))
    write_descriptor_set(descriptor)
    write_config(args.output, **options)
    print(f"wrote {args.output} and {descriptor}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
