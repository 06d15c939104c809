"""The gateway's two per-frame calls (an inspector's ``judge_many``, the line monitor's ``observe``) go over Ray
Serve's gRPC channel between replicas unless ``replica_calls: ray`` asks for Ray actor calls. The Ray deployment
class is built without Ray: its handles are stand-ins that record the options they were given and the calls
made through them."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from inspectline.config import GatewayOptions
from inspectline.serving.gateway import Gateway


class RecordedCall:
    def __init__(self, options: dict) -> None:
        self.options, self.args = options, []

    async def remote(self, *args):
        self.args.append(args)
        return ["judged"]


class RecordingHandle:
    def __init__(self) -> None:
        self.calls: list[RecordedCall] = []

    def options(self, **kwargs) -> RecordedCall:
        self.calls.append(RecordedCall(kwargs))
        return self.calls[-1]


def routed(options: GatewayOptions):
    gateway = object.__new__(Gateway.func_or_class)
    gateway.inspector, gateway.monitor, gateway.options = RecordingHandle(), RecordingHandle(), options
    gateway._route_frame_calls()
    return gateway


@pytest.mark.parametrize(("replica_calls", "by_reference"), [("grpc", False), ("ray", True)])
def test_each_frame_call_goes_the_way_the_config_names(replica_calls, by_reference):
    gateway = routed(GatewayOptions(replica_calls=replica_calls))
    assert asyncio.run(gateway._inspect_many(["job"])) == ["judged"]
    asyncio.run(gateway._send("batch"))
    [judge], [observe] = gateway.inspector.calls, gateway.monitor.calls
    assert judge.options == {"method_name": "judge_many", "_by_reference": by_reference} and judge.args == [(["job"],)]
    assert observe.options == {"method_name": "observe", "_by_reference": by_reference} and observe.args == [("batch",)]


def test_grpc_is_the_default():
    assert GatewayOptions().replica_calls == "grpc"


def test_an_unknown_transport_is_refused_naming_the_choices():
    with pytest.raises(ValidationError, match="'grpc' or 'ray'"):
        GatewayOptions(replica_calls="http")
