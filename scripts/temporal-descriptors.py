#!/usr/bin/env python3
"""Writes src/http_api/temporal_api.binpb: a FileDescriptorSet of Temporal's WorkflowService and
OperatorService, every file they import (google/api/annotations, so the `google.api.http` options
stay intact, and the well-known types), the error details and `google.rpc.Status`.

flowgate's HTTP API (`src/http_api`) loads it with `include_bytes!` to route HTTP requests and to
transcode JSON to protobuf and back, so the build never needs Python or protoc. Regenerating it is
a deliberate commit: a server with new fields or routes gets 400/404 from flowgate until then.

Sources:
  default        the descriptors compiled into the Python SDK (`temporalio`, with `protobuf` and
                 `googleapis-common-protos`), as in tests/support/temporal_descriptors.py.
  --api-go DIR   the Temporal files are taken instead from the `rawDesc` that protoc-gen-go embeds
                 in a go.temporal.io/api module (e.g. ~/go/pkg/mod/go.temporal.io/api@v1.63.5, after
                 `go mod download go.temporal.io/api@<the server's version>`), to pin exactly the
                 API version the server was built with. Files outside that module (google/...) still
                 come from the Python packages.

Every field gets its `json_name` (protoc's default, lowerCamelCase), which the Python descriptors
leave out.

Usage: temporal-descriptors.py [--api-go DIR] [-o src/http_api/temporal_api.binpb]
"""
import argparse
import glob
import os
import re
import sys

from google.protobuf import descriptor_pb2, descriptor_pool

try:
    import temporalio.api.errordetails.v1.message_pb2 as errordetails
    import temporalio.api.failure.v1.message_pb2  # noqa: F401  (failures inside error details)
    import temporalio.api.update.v1.message_pb2  # noqa: F401  (packed into Any by workers)
    from temporalio.api.operatorservice.v1 import service_pb2 as operator_service
    from temporalio.api.workflowservice.v1 import service_pb2 as workflow_service
    from google.rpc import status_pb2
except ImportError as error:
    sys.exit(f"cannot import the descriptors ({error}): the Python packages `temporalio` and "
             "`googleapis-common-protos` are needed")

ROOTS = [
    "temporal/api/workflowservice/v1/service.proto",
    "temporal/api/operatorservice/v1/service.proto",
    "temporal/api/errordetails/v1/message.proto",
    "temporal/api/failure/v1/message.proto",
    "temporal/api/update/v1/message.proto",
    "google/rpc/status.proto",
]
PYTHON_MODULES = [workflow_service, operator_service, errordetails, status_pb2]


# ------------------------------------------------------------------ api-go rawDesc

_GO_ESC = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}
_GO_STR = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def go_string_bytes(lit):
    """The bytes of the body of one interpreted Go string literal."""
    out = bytearray()
    i = 0
    while i < len(lit):
        c = lit[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        e = lit[i + 1]
        if e == "x":
            out.append(int(lit[i + 2:i + 4], 16))
            i += 4
        elif e in "01234567":
            out.append(int(lit[i + 1:i + 4], 8))
            i += 4
        elif e == "u":
            out += chr(int(lit[i + 2:i + 6], 16)).encode("utf-8")
            i += 6
        elif e == "U":
            out += chr(int(lit[i + 2:i + 10], 16)).encode("utf-8")
            i += 10
        else:
            out.append(_GO_ESC[e])
            i += 2
    return bytes(out)


def raw_desc_from_pb_go(path):
    src = open(path, encoding="utf-8").read()
    m = re.search(r"const file_\w+_rawDesc = ((?:\"(?:[^\"\\\n]|\\.)*\"\s*\+?\s*)+)", src)
    if m:  # newer protoc-gen-go: a string constant
        return b"".join(go_string_bytes(s) for s in _GO_STR.findall(m.group(1)))
    m = re.search(r"var file_\w+_rawDesc = \[\]byte\{(.*?)\n\}", src, re.S)
    if m:  # older protoc-gen-go: []byte{0x.., ...}
        return bytes(int(x, 16) for x in re.findall(r"0x[0-9a-fA-F]+", m.group(1)))
    return None


def api_go_files(api_dir):
    """Every FileDescriptorProto embedded in the module, by file name."""
    files = {}
    for path in glob.glob(os.path.join(api_dir, "**", "*.pb.go"), recursive=True):
        raw = raw_desc_from_pb_go(path)
        if raw is None:
            continue
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[proto.name] = proto
    if not files:
        sys.exit(f"no rawDesc found under {api_dir}")
    return files


# ------------------------------------------------------------------ the set

def python_file(name):
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
    return proto


def json_name(name):
    """protoc's default json_name: underscores dropped, the letter after one upper-cased."""
    out, upper = [], False
    for c in name:
        if c == "_":
            upper = True
        elif upper:
            out.append(c.upper())
            upper = False
        else:
            out.append(c)
    return "".join(out)


def fill_json_names(messages):
    for message in messages:
        for field in list(message.field) + list(message.extension):
            if not field.HasField("json_name"):
                field.json_name = json_name(field.name)
        fill_json_names(message.nested_type)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api-go", help="a go.temporal.io/api module directory to take the Temporal files from")
    ap.add_argument("-o", "--out", default=os.path.join(os.path.dirname(__file__), "..", "src", "http_api",
                                                        "temporal_api.binpb"))
    a = ap.parse_args()
    go = api_go_files(a.api_go) if a.api_go else {}

    def load(name):
        return go[name] if name in go else python_file(name)

    seen, files = set(), []

    def closure(name):
        if name in seen:
            return
        seen.add(name)
        proto = load(name)
        for dep in proto.dependency:
            closure(dep)
        fill_json_names(proto.message_type)
        files.append(proto)

    for root in ROOTS:
        closure(root)
    data = descriptor_pb2.FileDescriptorSet(file=files).SerializeToString()
    with open(a.out, "wb") as out:
        out.write(data)
    source = f"api-go {a.api_go}" if a.api_go else "the Python packages"
    print(f"{len(files)} files, {len(data)} bytes, from {source}, to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
