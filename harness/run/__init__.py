"""One guest run (runner) and the bench commands' glue on top of it."""
