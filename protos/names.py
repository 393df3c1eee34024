"""Protocol constants that both ends of the wire must agree on, and nothing else.

The gRPC service name, the protocol version, the names of the tensors a shard
serves, and the gRPC channel options (message limits, keepalive) both sides
set. Clients and servers import them from here, never from each other.
"""

from __future__ import annotations

from .codec import MAX_MESSAGE_BYTES

SERVICE = "rayps.v1.ParameterServer"
PROTOCOL = 1
TENSOR = "dense"  # the parameters and gradients: float32
BUFFERS = "buffers"  # the model buffers (float64), on shards that hold any

#: Keepalive pings find a dead peer within ~20 s even on an idle stream.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = CHANNEL_OPTIONS + [("grpc.http2.min_ping_interval_without_data_ms", 5_000)]
