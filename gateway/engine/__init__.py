"""Engine.IO v4 server: sessions, long-polling, WebSocket."""
