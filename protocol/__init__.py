"""Sans-I/O codecs for Engine.IO v4, Socket.IO v5 and the Redis adapter messages.

Nothing in this package performs I/O or imports from `gateway`.
"""
