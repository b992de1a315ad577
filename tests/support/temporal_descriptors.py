#!/usr/bin/env python3
"""Prints, as JSON, the request schemas of Temporal's WorkflowService and OperatorService.

The descriptors come from the Temporal Python SDK (`temporalio`), which ships the generated
protobuf code of the Temporal API. tests/catalog.rs checks flowgate's method catalog against
this output: every RPC is in the catalog, and every field path in the catalog names the field
it claims to.

Output:
    {"services": [{"name": <full service name>, "methods": [{"name", "input"}]}],
     "messages": {<full message name>: {"fields": [{"number", "name", "type", "repeated", "oneof"}]}}}

`type` is `string`, `bytes`, `bool`, `int32`, ..., `enum:<full name>` or `message:<full name>`;
`messages` holds every message reachable from a request message, and from the messages
Temporal unpacks from a request's `google.protobuf.Any` fields (PACKED).
"""

import json
import sys

try:
    from google.protobuf.descriptor import FieldDescriptor
    from temporalio.api.operatorservice.v1 import service_pb2 as operator_service
    from temporalio.api.workflowservice.v1 import service_pb2 as workflow_service
except ImportError as error:
    sys.exit(f"cannot import the Temporal API descriptors ({error}): the Python package `temporalio` is needed")

# What a worker packs into `google.protobuf.Any` (its protocol messages): not reachable by
# field types, so named here.
PACKED = [
    "temporal.api.update.v1.Acceptance",
    "temporal.api.update.v1.Rejection",
    "temporal.api.update.v1.Response",
]

SERVICES = [
    (workflow_service, "WorkflowService"),
    (operator_service, "OperatorService"),
]

SCALAR_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


def is_repeated(field):
    # protobuf >= 6 has `is_repeated`; older releases only `label`.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def field_type(field):
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return "message:" + field.message_type.full_name
    if field.type == FieldDescriptor.TYPE_ENUM:
        return "enum:" + field.enum_type.full_name
    return SCALAR_TYPES[field.type]


def describe_message(descriptor):
    return {
        "fields": [
            {
                "number": field.number,
                "name": field.name,
                "type": field_type(field),
                "repeated": is_repeated(field),
                "oneof": field.containing_oneof.name if field.containing_oneof else None,
            }
            for field in descriptor.fields
        ]
    }


def main():
    services = []
    messages = {}
    pending = []
    for module, name in SERVICES:
        service = module.DESCRIPTOR.services_by_name[name]
        methods = []
        for method in service.methods:
            methods.append({"name": method.name, "input": method.input_type.full_name})
            pending.append(method.input_type)
        services.append({"name": service.full_name, "methods": methods})
    from google.protobuf import descriptor_pool
    from temporalio.api.update.v1 import message_pb2  # noqa: F401 - registers the packed types

    pending.extend(descriptor_pool.Default().FindMessageTypeByName(name) for name in PACKED)
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in messages:
            continue
        messages[descriptor.full_name] = describe_message(descriptor)
        pending.extend(field.message_type for field in descriptor.fields if field.message_type is not None)
    json.dump({"services": services, "messages": messages}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
