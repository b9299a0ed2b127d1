"""The messages of Switchboard's own Twirp services (package `switchboard`), protobuf and JSON alike.

They are not LiveKit's, so livekit-protocol does not have them; they are declared here, in proto3 terms,
and built into real protobuf classes at import, so the Twirp server reads and writes them exactly as it
does LiveKit's (both content types, the same JSON rules). Enums reuse LiveKit's (`livekit.JobType`,
`livekit.WorkerStatus`). Times are Unix nanoseconds, as in LiveKit's `JobState`.
"""

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from livekit.protocol import agent

_FIELD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _FIELD.TYPE_STRING,
    "bool": _FIELD.TYPE_BOOL,
    "float": _FIELD.TYPE_FLOAT,
    "int64": _FIELD.TYPE_INT64,
    "uint32": _FIELD.TYPE_UINT32,
}

# Each message: its fields in order (numbered from 1), `name:type`, a trailing `*` for `repeated`.
SCHEMA = {
    "WorkerJob": "id:string dispatch_id:string room:string state:string",
    "Worker": (
        "id:string agent_name:string job_type:livekit.JobType deployment:string version:string "
        "status:livekit.WorkerStatus load:float draining:bool jobs:WorkerJob* node_id:string "
        "registered_at:int64 reported_job_count:uint32"
    ),
    "ListWorkersRequest": "agent_names:string*",
    "ListWorkersResponse": "workers:Worker*",
    "DrainWorkerRequest": "worker_id:string",
    "UndrainWorkerRequest": "worker_id:string",
    "ExplainDispatchRequest": "room:string dispatch_id:string",
    "WorkerVerdict": "worker_id:string load:float reason:string",
    "JobExplanation": (
        "dispatch_id:string agent_name:string job_id:string state:string summary:string "
        "workers:WorkerVerdict* since:int64 until:int64 earlier_attempts:string*"
    ),
    "ExplainDispatchResponse": "room:string jobs:JobExplanation*",
    "Node": (
        "id:string address:string state:string rooms:uint32 participants:uint32 workers:uint32 "
        "cpu_load:float version:string started_at:int64 updated_at:int64"
    ),
    "ListNodesRequest": "",
    "ListNodesResponse": "nodes:Node*",
    "DrainNodeRequest": "node_id:string",
    "UndrainNodeRequest": "node_id:string",
}


def _field(number: int, spec: str) -> descriptor_pb2.FieldDescriptorProto:
    name, _, kind = spec.partition(":")
    repeated = kind.endswith("*")
    kind = kind.removesuffix("*")
    field = _FIELD(
        name=name,
        number=number,
        label=_FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL,
        json_name=name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:]),
    )
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    elif kind.startswith("livekit."):
        field.type, field.type_name = _FIELD.TYPE_ENUM, f".{kind}"
    else:
        field.type, field.type_name = _FIELD.TYPE_MESSAGE, f".switchboard.{kind}"
    return field


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="switchboard.proto",
        package="switchboard",
        syntax="proto3",
        dependency=[agent.DESCRIPTOR.name],
    )
    for message, fields in SCHEMA.items():
        file.message_type.add(
            name=message, field=[_field(n, spec) for n, spec in enumerate(fields.split(), start=1)]
        )
    pool = descriptor_pool.Default()
    pool.Add(file)
    classes = message_factory.GetMessageClassesForFiles([file.name], pool)
    return {name.removeprefix("switchboard."): cls for name, cls in classes.items()}


_CLASSES = _build()
WorkerJob = _CLASSES["WorkerJob"]
Worker = _CLASSES["Worker"]
ListWorkersRequest = _CLASSES["ListWorkersRequest"]
ListWorkersResponse = _CLASSES["ListWorkersResponse"]
DrainWorkerRequest = _CLASSES["DrainWorkerRequest"]
UndrainWorkerRequest = _CLASSES["UndrainWorkerRequest"]
ExplainDispatchRequest = _CLASSES["ExplainDispatchRequest"]
WorkerVerdict = _CLASSES["WorkerVerdict"]
JobExplanation = _CLASSES["JobExplanation"]
ExplainDispatchResponse = _CLASSES["ExplainDispatchResponse"]
Node = _CLASSES["Node"]
ListNodesRequest = _CLASSES["ListNodesRequest"]
ListNodesResponse = _CLASSES["ListNodesResponse"]
DrainNodeRequest = _CLASSES["DrainNodeRequest"]
UndrainNodeRequest = _CLASSES["UndrainNodeRequest"]
