"""The data pipeline: shards -> DALI decode and augmentation -> target maps, on CPU or GPU."""
