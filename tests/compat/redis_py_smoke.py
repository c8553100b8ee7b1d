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
# `triarch up` starts the canonical keyspaces available in this version.
assert sorted(a.execute_command("TRIARCH.KEYSPACE", "LIST")) == [b"balance", b"cart", b"default", b"prefs"]

r3 = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), protocol=3)
assert r3.set("py:resp3", "x") is True and r3.get("py:resp3") == b"x"

# ---- primary-backup: `balance` is one Raft group; every node serves it (followers forward).
info = a.execute_command("TRIARCH.KEYSPACE", "INFO", "balance")
info = dict(zip(info[::2], info[1::2])) if isinstance(info, list) else info
assert info[b"model"] == b"primary-backup", info
assert a.set("balance:alice", 100) is True and b.set("balance:bob", 50) is True
assert b.get("balance:alice") == b"100", "a primary-backup write is read through another node"
assert a.incr("balance:visits") == 1 and b.incr("balance:visits") == 2
assert b.incrby("balance:visits", 10) == 12 and a.decr("balance:visits") == 11
assert a.execute_command("TRIARCH.CAS", "balance:visits", "11", "20") == 1
assert b.execute_command("TRIARCH.CAS", "balance:visits", "11", "30") == 0, "a CAS on a stale value fails"
assert a.get("balance:visits") == b"20"

# A transfer with redis-py's optimistic transaction: WATCH, read, MULTI ... EXEC, retried on
# WatchError. The first attempt is spoiled by a write through the other node between WATCH and
# EXEC, so it must abort (WatchError) and the retry must succeed.
attempts = []


def transfer(pipe, source="balance:alice", target="balance:bob", amount=30):
    attempts.append(1)
    s_bal = int(pipe.get(source))
    t_bal = int(pipe.get(target))
    if len(attempts) == 1:
        b.incrby(source, 1)  # another client changes a watched key
    pipe.multi()
    pipe.set(source, s_bal - amount)
    pipe.set(target, t_bal + amount)


assert a.transaction(transfer, "balance:alice", "balance:bob") == [True, True]
assert len(attempts) == 2, f"the spoiled attempt was not retried: {len(attempts)} attempts"
assert (b.get("balance:alice"), b.get("balance:bob")) == (b"71", b"80")

# The same loop written out, as in redis-py's documentation, through a follower or the leader.
with b.pipeline(transaction=True) as pipe:
    while True:
        try:
            pipe.watch("balance:alice", "balance:bob")
            alice, bob = int(pipe.get("balance:alice")), int(pipe.get("balance:bob"))
            pipe.multi()
            pipe.decrby("balance:alice", 1)
            pipe.incrby("balance:bob", 1)
            assert pipe.execute() == [alice - 1, bob + 1]
            break
        except redis.WatchError:
            continue

# Concurrent transfers between three accounts through both nodes: WatchError retries, and the
# total is conserved, no balance negative.
import threading

accounts = ["balance:acct:%d" % i for i in range(3)]
for k in accounts:
    a.set(k, 100)
retries = [0]


def worker(client, seed):
    for i in range(15):
        src, dst = accounts[(seed + i) % 3], accounts[(seed + i + 1) % 3]
        with client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(src, dst)
                    s_bal = int(pipe.get(src))
                    amount = min(s_bal, 1 + (seed * 5 + i) % 9)
                    pipe.multi()
                    pipe.decrby(src, amount)
                    pipe.incrby(dst, amount)
                    pipe.execute()
                    break
                except redis.WatchError:
                    retries[0] += 1


threads = [threading.Thread(target=worker, args=(c, n)) for n, c in enumerate([a, b, a, b])]
for t in threads:
    t.start()
for t in threads:
    t.join()
balances = [int(b.get(k)) for k in accounts]
assert sum(balances) == 300 and min(balances) >= 0, balances
print(f"redis-py transactions: 60 concurrent transfers, {retries[0]} WatchError retries, balances {balances}")

# A command that fails inside EXEC does not roll back the others (as in Redis).
pipe = a.pipeline(transaction=True)
pipe.set("balance:s", "abc")
pipe.incr("balance:s")
pipe.set("balance:t", "1")
results = pipe.execute(raise_on_error=False)
assert results[0] is True and isinstance(results[1], redis.ResponseError) and results[2] is True, results
assert b.get("balance:s") == b"abc" and b.get("balance:t") == b"1"
# A command that cannot be queued discards the whole transaction (EXECABORT).
pipe = a.pipeline(transaction=True)
pipe.set("balance:u", "1")
pipe.sadd("balance:u", "x")
try:
    pipe.execute()
    raise AssertionError("EXEC after a refused command was applied")
except redis.ResponseError as e:
    assert "EXECABORT" in str(e) or "not supported inside MULTI" in str(e), e
assert b.get("balance:u") is None
# WATCH and MULTI/EXEC are for primary-backup keyspaces only.
try:
    a.execute_command("WATCH", "py:k")
    raise AssertionError("WATCH on a leaderless key accepted")
except redis.ResponseError as e:
    assert "primary-backup" in str(e), e
# Pipelined (non-transactional) writes on a primary-backup keyspace share the leader's batches.
pipe = b.pipeline(transaction=False)
for i in range(200):
    pipe.incr("balance:pipelined")
assert pipe.execute() == list(range(1, 201)), "pipelined increments apply once each, in order"
r3 = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), protocol=3)
with r3.pipeline(transaction=True) as pipe:
    pipe.watch("balance:alice")
    pipe.multi()
    pipe.get("balance:alice")
    assert pipe.execute() == [a.get("balance:alice")], "RESP3 transactions"
print("redis-py smoke: ok")
