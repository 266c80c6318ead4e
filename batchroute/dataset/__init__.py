"""Reading the input: JSONL, CSV or Parquet (optionally gzip/zstd), streamed in bounded batches.

    open_dataset(job) -> Dataset
    Dataset.check() -> DatasetSummary         one full pass; file-level problems raise DatasetError
    Dataset.batches(batch_rows) -> Batch...   rows (INPUT_SCHEMA + metadata) and rejects

The modules follow the data: `source` (bytes: compression, encoding), `records` (whole records in
chunks), a reader per format (`jsonl`, `csvfile`, `parquetfile`), `messages` (chat rows),
`normalize` (to INPUT_SCHEMA) and `rejects` (the on_invalid_row policy).
"""

from batchroute.dataset.reader import Batch, Dataset, DatasetSummary, open_dataset
from batchroute.dataset.rejects import REJECT_SCHEMA

__all__ = ["REJECT_SCHEMA", "Batch", "Dataset", "DatasetSummary", "open_dataset"]
