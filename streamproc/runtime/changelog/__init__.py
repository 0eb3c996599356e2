"""Changelogs: the record format (`records`), the restore loop (`restore`), global tables (`globals`) and the
store-definition check against a changelog (`definitions`). See docs/design.md, "Restore"."""
