//! KV cache manager.
