"""Development and test helpers, not the user API: a local OpenAI-compatible server
(:mod:`rillet.dev.openai_server`, ``python -m rillet.dev.openai_server``) and real sample
media for demos, tests and benchmarks (:mod:`rillet.dev.datasets`).

Nothing in :mod:`rillet` imports this package; its modules may change without notice.
"""
