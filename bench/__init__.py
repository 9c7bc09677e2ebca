"""Benchmark suite: our gateway and its peers (Node.js socket.io, python-socketio) side by side."""
