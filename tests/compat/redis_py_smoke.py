"""redis-py against a Triarch cluster, unmodified: the client API a Python user would touch.

Usage: python3 redis_py_smoke.py PORT_A PORT_B  (two nodes of one cluster)
Exits non-zero with a message on the first deviation.
"""
import sys

import redis

a = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
b = redis.Redis(host="127.0.0.1", port=int(sys.argv[2]))

assert a.ping() is True
assert a.echo(b"hi") == b"hi"
assert a.set("py:k", b"\x00binary\xff") is True
assert b.get("py:k") == b"\x00binary\xff", "a write on one node is read on another"
assert b.get("py:missing") is None
assert a.mset({"py:a": "1", "py:b": "2"}) is True
assert b.mget(["py:a", "py:b", "py:none"]) == [b"1", b"2", None]
assert b.exists("py:a", "py:b", "py:none") == 2
assert a.delete("py:a", "py:none") == 1
assert b.get("py:a") is None

pipe = a.pipeline(transaction=False)
for i in range(200):
    pipe.set(f"py:pipe:{i}", i)
assert all(pipe.execute())
pipe = b.pipeline(transaction=False)
for i in range(200):
    pipe.get(f"py:pipe:{i}")
assert pipe.execute() == [str(i).encode() for i in range(200)], "pipelined replies come back in order"

try:
    a.execute_command("NOSUCHCOMMAND", "x")
    raise AssertionError("unknown command accepted")
except redis.ResponseError as e:
    assert "unknown command" in str(e), e

info = a.info()
assert "node_id" in info, info
assert a.execute_command("TRIARCH.KEYSPACE", "LIST") == [b"default"]

r3 = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), protocol=3)
assert r3.set("py:resp3", "x") is True and r3.get("py:resp3") == b"x"
print("redis-py smoke: ok")
