"""Tasks and their lifecycle: `Task` (one sub-topology for one partition, broker-free), `TaskManager` (phases),
input clocks (`watermarks`), and the apply/discard of a checkpoint shared by the worker and the test driver
(`checkpointing`). See docs/design.md."""
