"""WebDataset shard writer, parquet index, reader, statistics and verification."""
