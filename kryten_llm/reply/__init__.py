"""What the bot says: the prompt, streaming the answer into chat lines, and the checks on them.

prompts -> responder (formatter -> validator -> guard) -> sender. It may import `llm/`,
`config`, `types`, `context` and `redact`; never decide, ops, daemon or tools.
"""
