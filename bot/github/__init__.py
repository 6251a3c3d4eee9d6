"""The GitHub bot: one issue per finding per target repository, kept in step with the store.

- :mod:`bot.github.escape`: escapers for untrusted text (Markdown, HTML, mentions, references);
- :mod:`bot.github.body`: the issue body from a Jinja2 template, shortened under GitHub's limit;
- :mod:`bot.github.evidence`: what the run history says (passing streaks, failures) per finding;
- :mod:`bot.github.decide`: the pure decision (create, update, comment, close, reopen, labels);
- :mod:`bot.github.client`: the thin PyGithub adapter (auth, retries, idempotent writes);
- :mod:`bot.github.run`: one run (gather, list, decide, apply, record) and ``llmcompat bot``.
"""
