"""Peer servers under test, each serving the same bench contract as bench/app.py."""
