"""`python -m kryten_llm` is the same as the `kryten-llm` command."""

from kryten_llm.cli import main

raise SystemExit(main())
