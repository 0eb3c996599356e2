"""HTTP serving: routes (`http`), store reads (`queries`), the one presentation of store entries (`present`),
the change feed (`changes`), the instances directory (`directory`), the live page (`static/`). See
docs/design.md."""
