"""What grpcurl does with messages that buf curl does differently, for
tests/grpcurl_shim.sh (python3-protobuf):

  text-to-json METHOD < text   -format text: grpcurl's text parser takes no
                               '#' comments (it fails with "invalid
                               character: #"), so neither does this; the
                               message is parsed as METHOD's input type and
                               printed as JSON for buf curl.
  proto-names METHOD < json    grpcurl prints proto field names (job_id):
                               the descriptors reflection serves carry no
                               json_name. buf curl prints jsonName (jobId);
                               this rewrites its answers (one or more JSON
                               objects) to grpcurl's keys.

Descriptors come from psd's .proto files (PSD_PROTO_DIR) and Debian's
health.proto, compiled with protoc.
"""
import json
import os
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf import message_factory, text_format

GRPC_PROTO = "/usr/share/grpc-proto"


def pool():
    proto_dir = os.environ["PSD_PROTO_DIR"]
    with tempfile.NamedTemporaryFile(suffix=".pb") as out:
        protos = sorted(p for p in os.listdir(proto_dir) if p.endswith(".proto"))
        subprocess.run(["protoc", "-I", proto_dir, "-I", GRPC_PROTO,
                        "--include_imports", "--descriptor_set_out=" + out.name]
                       + protos + ["grpc/health/v1/health.proto"],
                       check=True, cwd=proto_dir)
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read())
    result = descriptor_pool.DescriptorPool()
    for f in files.file:
        result.Add(f)
    return result


def method(p, name):  # "pkg.Service/Method"
    service, _, rpc = name.partition("/")
    try:
        return p.FindServiceByName(service).methods_by_name[rpc]
    except KeyError:
        return None


def message(descriptor):
    return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(
        descriptor)()


def main():
    mode, name = sys.argv[1], sys.argv[2]
    text = sys.stdin.read()
    m = method(pool(), name)
    if mode == "text-to-json":
        for n, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):
                sys.exit(f"grpcurl shim: line {n}, col 1: invalid character: "
                         "# (grpcurl's text format takes no # comments)")
        msg = message(m.input_type)
        text_format.Parse(text, msg)
        print(json_format.MessageToJson(msg))
        return
    if m is None:
        sys.stdout.write(text)
        return
    decoder, pos = json.JSONDecoder(), 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        obj, pos = decoder.raw_decode(text, pos)
        msg = message(m.output_type)
        json_format.ParseDict(obj, msg)
        print(json_format.MessageToJson(msg, preserving_proto_field_name=True))


main()
