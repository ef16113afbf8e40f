"""Whether to answer a line: filters, triggers, ranks, spam and loop guards, limits, budgets.

Synchronous and cheap, run in event order by the pipeline. It may import only `config`,
`types`, `events` and the private helpers at the package root; never reply, llm or daemon.
"""
