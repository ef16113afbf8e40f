"""What the bot keeps across restarts: memories chat asked for, personas, opt-outs, history.

`keeper.Keeper` holds each of them as an in-process mirror that decisions read and change
synchronously (in event order, so replay and dry run decide as a live run does), and writes
them behind to JetStream KV through `state/` with one ordered writer (`writer.py`), so no chat
line or reply waits for KV. `notes.py` is the memory record and its keyword search.

It may import `config`, `types`, `context`, `state` and the private helpers at the package
root; the pipeline, the chat commands and the daemon import it; never reply, decide or llm.
"""
