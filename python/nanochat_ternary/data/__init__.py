"""Training data: token shards (`shards`)."""

from .shards import ShardWriter, TokenShards, read_meta

__all__ = ["ShardWriter", "TokenShards", "read_meta"]
