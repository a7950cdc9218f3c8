"""The Lua script that runs a batch of dedupe operations, each on its own, and what its answer means.

KEYS[i] is the i-th operation's key, and line i of ARGV[1] the operation: its name, a duration in
milliseconds (the lease, the TTL, or the extension) and the attempt's token. (One argument and one
reply for the whole batch: redis-py's cost is per argument and per reply element.)
- claim: set the token with the lease if the key is absent and answer 'new', else answer what is there.
  One command for a new key (SET NX; reading first took two, docs/performance.md). A refused SET (OOM,
  READONLY, an ACL refusal) still answers a key that is there, as a read, and fails only when the key is
  absent: the outcome reading first had;
- commit: the record is in Kafka: 'done' for the TTL, unconditionally;
- release, extend: delete the key, or lengthen its lease, only while it still holds this token.

Redis does not roll a script back, so each operation runs under `redis.pcall` and gets its own reply
line: `+` and its value, or `-` and its error (WRONGTYPE, OOM under `noeviction`, a line the script
cannot read). An operation that failed changed nothing (it writes once at most, and a write is its
outcome), and the ones around it keep their outcome. Line i always answers KEYS[i]: an unreadable line
fails, it never shifts the operations after it onto other keys. One error fails the whole call instead
(when an operation needs a write; what a read can answer is answered): READONLY, a replica refusing
every write, so nothing was written (a demoted master whose clients were not disconnected, as Sentinel
does); redis-py's Sentinel connection then drops the connection and asks the sentinels for the new
master.
"""

from __future__ import annotations

import hashlib

from redis.exceptions import NoPermissionError, OutOfMemoryError, RedisError, ResponseError

SCRIPT = """
local function failed(reply) return type(reply) == 'table' and reply.err end
local replies = {}
local i = 0
for line in string.gmatch(ARGV[1], '([^\\n]*)\\n') do
  i = i + 1
  local key = KEYS[i]
  local op, ms, token = string.match(line, '^(%a+) (%d+) (.*)$')
  local reply
  if op == 'claim' then
    local set = redis.pcall('SET', key, token, 'NX', 'PX', ms)
    if set and not failed(set) then
      reply = 'new'
    else
      reply = redis.pcall('GET', key)
      if not reply and failed(set) then reply = set end
    end
  elseif op == 'commit' then
    reply = redis.pcall('SET', key, 'done', 'PX', ms)
    if not failed(reply) then reply = '1' end
  elseif op == 'release' or op == 'extend' then
    reply = redis.pcall('GET', key)
    if reply == token then
      if op == 'release' then reply = redis.pcall('DEL', key) else reply = redis.pcall('PEXPIRE', key, ms) end
    elseif not failed(reply) then
      reply = 0
    end
  else
    reply = {err = 'ERR unreadable dedupe operation'}
  end
  if failed(reply) and string.sub(reply.err, 1, 9) == 'READONLY ' then
    return redis.error_reply(reply.err)
  elseif failed(reply) then
    replies[i] = '-' .. (string.gsub(reply.err, '\\n', ' '))
  else
    replies[i] = '+' .. (string.gsub(tostring(reply), '\\n', ' '))
  end
end
return table.concat(replies, '\\n')
"""
DIGEST = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()  # Redis's name for the script
OPERATIONS = frozenset({"claim", "commit", "release", "extend"})


def line(op: str, token: str, milliseconds: int) -> bytes:
    """One operation's line; ValueError for what the script could not read back as given."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown dedupe operation {op!r}")
    if type(milliseconds) is not int or milliseconds < 0 or (milliseconds == 0 and op != "release"):
        raise ValueError(f"dedupe {op}: milliseconds must be a positive integer, not {milliseconds!r}")
    if "\n" in token or "\r" in token:
        raise ValueError(f"dedupe {op}: the token must be one line")
    return f"{op} {milliseconds} {token}\n".encode()


def replies(answer: object, count: int) -> list[str | RedisError]:
    """Each operation's reply, or its error, from the script's answer to `count` operations."""
    if isinstance(answer, bytes):
        answer = answer.decode(errors="replace")
    text = answer if isinstance(answer, str) else ""
    results = text.split("\n") if isinstance(answer, str) else []
    if len(results) != count:
        raise RedisError(f"the dedupe script answered {len(results)} replies to {count} operations")
    if text.startswith("+") and text.count("\n+") == count - 1:  # no error: every line starts with '+'
        return [result[1:] for result in results]
    return [_reply(result) for result in results]


# An operation's error, by its code, as redis-py would raise it had the command been sent alone.
ERRORS: dict[str, type[ResponseError]] = {"OOM": OutOfMemoryError, "NOPERM": NoPermissionError}


def _reply(result: str) -> str | RedisError:
    if result.startswith("+"):
        return result[1:]
    code, _, message = result[1:].partition(" ")
    kind = ERRORS.get(code)
    return ResponseError(result[1:]) if kind is None else kind(message)
