# example.py — run with: .venv/bin/python example.py
import re
from gateway import ConnectionRefused, Server
from gateway.config import Settings
from gateway.runtime import run

io = Server(Settings(port=3001))
chat = io.of("/chat")

@chat.use
def authenticate(socket):
    if socket.handshake["auth"].get("token") != "s3cret":
        raise ConnectionRefused("unauthorized", {"hint": "send auth: {token}"})  # CONNECT_ERROR

@chat.on("connection")
def connected(socket):
    socket.join("lobby")
    socket.emit("welcome", {"id": socket.id})

    @socket.on("say")
    def say(text, ack=None):                      # the client emitted with an ack callback
        socket.to("lobby").except_("muted").emit("said", {"from": socket.id, "text": text})
        if ack:
            ack("delivered")                      # or simply: return "delivered"

    @socket.on("ask-client")
    async def ask_client():
        answer = await socket.emit_with_ack("question", "ready?", timeout=5)  # server -> client ack
        socket.emit("answer", answer)

    @socket.on("disconnect")
    def gone(reason):                             # "transport close", "ping timeout", ...
        pass

@io.of(re.compile(r"^/tenant-\d+$")).on("connection")   # dynamic namespaces
def tenant(socket):
    socket.emit("hello", socket.nsp.name)

run(io.start, io.close)
