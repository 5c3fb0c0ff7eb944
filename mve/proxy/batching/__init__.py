"""Dynamic batching of one variant's requests: many callers' ModelInferRequests as one model call.

- `batcher`: `VariantBatcher`, the queues, timers and futures of one variant's batches.
- `policy`: `BatchingPolicy`, a variant's validated batching knobs (max batch size, max delay,
  batches in flight per instance, queued rows).
- `assembly`: compatible requests stacked into one batch along the first dimension, and the batch's
  answer split back per caller by rows (`_fastroute.assemble_batch` / `split_batch`).
- `queue`: the waiting room: callers (`Member`) in queues of one compatibility key (`KeyQueue`).
"""
