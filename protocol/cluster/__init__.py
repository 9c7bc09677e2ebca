"""Redis wire format of @socket.io/redis-adapter 8.3 (classic and sharded) and redis-emitter 5.1.

Sans-I/O: channel names, payload bytes and typed values; the transports in `gateway/cluster/` do
the Redis commands. Every encoder reproduces Node's bytes exactly (key order, msgpack vs JSON,
integer forms), because Node peers and the golden vectors compare bytes, and Node receivers sniff
the first byte to pick a decoder.

- `values`: JS numbers and dates, the msgpack / JSON codecs;
- `messages`: the typed messages the cluster adapter speaks, one `BroadcastOptions`, one `Room`;
- `classic`: PUBLISH/PSUBSCRIBE channels and payloads, legacy and emitter forms;
- `sharded`: the SPUBLISH/SSUBSCRIBE envelope and channels.

Decoding validates completely: anything undecodable or lacking a required field raises
`ClusterMessageError`, which the caller counts and drops.
"""

from .classic import (
    ClassicBroadcast,
    ClassicRequest,
    ClassicResponse,
    broadcast_channel,
    broadcast_pattern,
    decode_classic_broadcast,
    decode_classic_request,
    decode_classic_response,
    encode_all_rooms_request,
    encode_all_rooms_response,
    encode_broadcast_ack_response,
    encode_broadcast_with_ack_request,
    encode_classic_broadcast,
    encode_client_count_response,
    encode_emitter_broadcast,
    encode_fetch_sockets_request,
    encode_fetch_sockets_response,
    encode_legacy_ack_response,
    encode_legacy_remote_disconnect,
    encode_legacy_remote_join,
    encode_legacy_remote_leave,
    encode_remote_disconnect,
    encode_remote_join,
    encode_remote_leave,
    encode_server_side_emit,
    encode_server_side_emit_response,
    encode_sockets_request,
    encode_sockets_response,
    request_channel,
    response_channel,
    room_of_channel,
)
from .messages import (
    DEFAULT_PREFIX,
    EMITTER_UID,
    EVENT,
    AllRooms,
    Answer,
    Broadcast,
    BroadcastOptions,
    DisconnectSockets,
    FetchSockets,
    Message,
    Request,
    RequestType,
    Response,
    Room,
    ServerSideEmit,
    ShardedType,
    SingleSocket,
    SocketIds,
    SocketsJoin,
    SocketsLeave,
    SubscriptionMode,
    is_socket_description,
    looks_like_socket_id,
    new_classic_id,
    new_sharded_id,
    numeric_room,
    room_text,
    socket_description,
    socket_handshake,
)
from .sharded import (
    ShardedMessage,
    decode_sharded,
    encode_sharded,
    sharded_broadcast,
    sharded_broadcast_ack,
    sharded_channel,
    sharded_client_count,
    sharded_disconnect_sockets,
    sharded_fetch_sockets,
    sharded_fetch_sockets_response,
    sharded_node_channel,
    sharded_publish_channel,
    sharded_room_channel,
    sharded_room_subscribed,
    sharded_server_side_emit,
    sharded_server_side_emit_response,
    sharded_sockets_join,
    sharded_sockets_leave,
)
from .values import MISSING, contains_binary, js_date_string, js_iso_string, js_numbers

__all__ = [
    "DEFAULT_PREFIX", "EMITTER_UID", "EVENT", "MISSING",
    "AllRooms", "Answer", "Broadcast", "BroadcastOptions", "ClassicBroadcast", "ClassicRequest",
    "ClassicResponse", "DisconnectSockets", "FetchSockets", "Message", "Request", "RequestType",
    "Response", "Room", "ServerSideEmit", "ShardedMessage", "ShardedType", "SingleSocket",
    "SocketIds", "SocketsJoin", "SocketsLeave", "SubscriptionMode",
    "broadcast_channel", "broadcast_pattern", "contains_binary", "decode_classic_broadcast",
    "decode_classic_request", "decode_classic_response", "decode_sharded",
    "encode_all_rooms_request", "encode_all_rooms_response", "encode_broadcast_ack_response",
    "encode_broadcast_with_ack_request", "encode_classic_broadcast", "encode_client_count_response",
    "encode_emitter_broadcast", "encode_fetch_sockets_request", "encode_fetch_sockets_response",
    "encode_legacy_ack_response", "encode_legacy_remote_disconnect", "encode_legacy_remote_join",
    "encode_legacy_remote_leave", "encode_remote_disconnect", "encode_remote_join",
    "encode_remote_leave", "encode_server_side_emit", "encode_server_side_emit_response",
    "encode_sharded", "encode_sockets_request", "encode_sockets_response", "is_socket_description",
    "js_date_string", "js_iso_string", "js_numbers", "looks_like_socket_id", "new_classic_id",
    "new_sharded_id", "numeric_room", "request_channel", "response_channel", "room_of_channel",
    "room_text", "sharded_broadcast", "sharded_broadcast_ack", "sharded_channel",
    "sharded_client_count", "sharded_disconnect_sockets", "sharded_fetch_sockets",
    "sharded_fetch_sockets_response", "sharded_node_channel", "sharded_publish_channel",
    "sharded_room_channel", "sharded_room_subscribed", "sharded_server_side_emit",
    "sharded_server_side_emit_response", "sharded_sockets_join", "sharded_sockets_leave",
    "socket_description", "socket_handshake",
]
