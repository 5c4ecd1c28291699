"""The Sparkplug B payload schema (Eclipse Sparkplug 3.0, `spBv1.0`), built with the `protobuf`
package's descriptor API instead of generated code, so it needs no protoc and works with any
protobuf runtime from 4.22 on.

It declares what a host application reads, with the field numbers of the specification's
`sparkplug_b.proto`; the parts it leaves out (metric metadata, DataSet and Template values,
extensions) are kept by protobuf as unknown fields and ignored here:

    Payload   { uint64 timestamp = 1; repeated Metric metrics = 2; uint64 seq = 3; string uuid = 4; bytes body = 5; }
    Metric    { string name = 1; uint64 alias = 2; uint64 timestamp = 3; uint32 datatype = 4;
                bool is_historical = 5; bool is_transient = 6; bool is_null = 7; PropertySet properties = 9;
                oneof value { uint32 int_value = 10; uint64 long_value = 11; float float_value = 12;
                              double double_value = 13; bool boolean_value = 14; string string_value = 15;
                              bytes bytes_value = 16; } }
    PropertySet   { repeated string keys = 1; repeated PropertyValue values = 2; }
    PropertyValue { uint32 type = 1; bool is_null = 2;
                    oneof value { uint32 int_value = 3; uint64 long_value = 4; float float_value = 5;
                                  double double_value = 6; bool boolean_value = 7; string string_value = 8; } }

Usage: `Payload.FromString(data)`, `Payload(metrics=[Metric(name=..., ...)]).SerializeToString()`.
"""

from __future__ import annotations

from enum import IntEnum

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "controltower.sparkplug_b"


class DataType(IntEnum):
    """Sparkplug B metric and property data types (the `datatype` / `type` fields)."""

    UNKNOWN = 0
    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14
    UUID = 15
    DATASET = 16
    BYTES = 17
    FILE = 18
    TEMPLATE = 19
    PROPERTY_SET = 20
    PROPERTY_SET_LIST = 21


def _message(name: str, fields: list[tuple], oneof: str | None = None) -> descriptor_pb2.DescriptorProto:
    """fields: (name, number, type, repeated?, message type name or None, in the oneof?)."""
    msg = descriptor_pb2.DescriptorProto(name=name)
    if oneof:
        msg.oneof_decl.add(name=oneof)
    for fname, number, ftype, repeated, type_name, in_oneof in fields:
        field = msg.field.add(
            name=fname,
            number=number,
            type=ftype,
            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
        )
        if type_name:
            field.type_name = f".{_PACKAGE}.{type_name}"
        if in_oneof:
            field.oneof_index = 0
    return msg


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="controltower/sparkplug_b.proto", package=_PACKAGE, syntax="proto2")
    f.message_type.append(
        _message(
            "PropertyValue",
            [
                ("type", 1, _F.TYPE_UINT32, False, None, False),
                ("is_null", 2, _F.TYPE_BOOL, False, None, False),
                ("int_value", 3, _F.TYPE_UINT32, False, None, True),
                ("long_value", 4, _F.TYPE_UINT64, False, None, True),
                ("float_value", 5, _F.TYPE_FLOAT, False, None, True),
                ("double_value", 6, _F.TYPE_DOUBLE, False, None, True),
                ("boolean_value", 7, _F.TYPE_BOOL, False, None, True),
                ("string_value", 8, _F.TYPE_STRING, False, None, True),
            ],
            oneof="value",
        )
    )
    f.message_type.append(
        _message(
            "PropertySet",
            [
                ("keys", 1, _F.TYPE_STRING, True, None, False),
                ("values", 2, _F.TYPE_MESSAGE, True, "PropertyValue", False),
            ],
        )
    )
    f.message_type.append(
        _message(
            "Metric",
            [
                ("name", 1, _F.TYPE_STRING, False, None, False),
                ("alias", 2, _F.TYPE_UINT64, False, None, False),
                ("timestamp", 3, _F.TYPE_UINT64, False, None, False),
                ("datatype", 4, _F.TYPE_UINT32, False, None, False),
                ("is_historical", 5, _F.TYPE_BOOL, False, None, False),
                ("is_transient", 6, _F.TYPE_BOOL, False, None, False),
                ("is_null", 7, _F.TYPE_BOOL, False, None, False),
                ("properties", 9, _F.TYPE_MESSAGE, False, "PropertySet", False),
                ("int_value", 10, _F.TYPE_UINT32, False, None, True),
                ("long_value", 11, _F.TYPE_UINT64, False, None, True),
                ("float_value", 12, _F.TYPE_FLOAT, False, None, True),
                ("double_value", 13, _F.TYPE_DOUBLE, False, None, True),
                ("boolean_value", 14, _F.TYPE_BOOL, False, None, True),
                ("string_value", 15, _F.TYPE_STRING, False, None, True),
                ("bytes_value", 16, _F.TYPE_BYTES, False, None, True),
            ],
            oneof="value",
        )
    )
    f.message_type.append(
        _message(
            "Payload",
            [
                ("timestamp", 1, _F.TYPE_UINT64, False, None, False),
                ("metrics", 2, _F.TYPE_MESSAGE, True, "Metric", False),
                ("seq", 3, _F.TYPE_UINT64, False, None, False),
                ("uuid", 4, _F.TYPE_STRING, False, None, False),
                ("body", 5, _F.TYPE_BYTES, False, None, False),
            ],
        )
    )
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())

Payload = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.Payload"))
Metric = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.Metric"))
PropertySet = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.PropertySet"))
PropertyValue = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.PropertyValue"))
