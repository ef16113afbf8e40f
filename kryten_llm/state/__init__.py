"""Durable state: everything that must outlive the process lives in NATS JetStream KV.

**Why KV.** The bot already depends on NATS and nothing else: JetStream key-value buckets
give durable, replicated state with per-key revisions and server-checked writes, so memory,
personas and history survive restarts, and several replicas can later share them, with no
database or files to run, back up or lock. Buckets are named `<prefix><purpose>`
(`kryten_llm_memory`, `kryten_llm_history`, `kryten_llm_personas`), created with the
configured history, replicas and value size, and updated to them if they already exist.

**Keys** (`keys.py`). Names are untrusted and NATS KV keys are strict (`A-Za-z0-9-_/=.`,
`.`-separated non-empty tokens, `*` and `>` are wildcards), so a key is parts of text, each
encoded reversibly: itself when made only of `A-Za-z0-9_-`, else `=` + base64url of its UTF-8
bytes. Room keys take the `ChannelKey` (domain exact, channel lower-cased); user keys also
lower-case the user name, as CyTube compares names. The kind (`room`, `user`, or a feature's
own constant) comes first, so kinds, domains and case variants never collide.

**Compare-and-set** (`Bucket.update`). Read the value and its revision, apply a pure function,
write with `last=revision` (revision 0: create); if another writer got there first the server
refuses, and the update starts again from the new value, a bounded number of times. Two
writers never lose an update. `put` is a plain last-writer-wins write.

**Degradation** (`store.py`). When JetStream is not there (not enabled on the server, the
connection down, a timeout), every call keeps working on an in-memory bucket with the same
API, bounded in keys; ONE warning says why durable state is off, and `StateStore.status`
(`available`, `reason`, `degraded`) tells health. A background task reconnects with doubling
waits and re-creates the buckets; when it succeeds, the keys written in memory meanwhile are
carried over to KV unless KV has a value for them (KV is the shared truth), and KV is used
again. Reads during an outage do not see KV's values; deletes made during it are not replayed.

It may import only `config`, `types` and the private helpers at the package root (`_bus`,
`_throttle`, `logsetup`); the daemon, pipeline and feature rooms import it.

Use: one `StateStore(settings.state, client)` per process, `await store.start()`,
`store.bucket("memory", list[str])` per feature, `await store.close()` on shutdown.
"""

from kryten_llm.state._backend import StateConflictError, StateValueError
from kryten_llm.state.keys import MAX_KEY_CHARS, StateKey, decode_part, encode_part
from kryten_llm.state.store import KEYS_LIMIT, Bucket, StateStatus, StateStore

__all__ = [
    "KEYS_LIMIT",
    "MAX_KEY_CHARS",
    "Bucket",
    "StateConflictError",
    "StateKey",
    "StateStatus",
    "StateStore",
    "StateValueError",
    "decode_part",
    "encode_part",
]
