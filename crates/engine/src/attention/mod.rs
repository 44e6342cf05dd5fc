//! Attention backends reading K/V through block tables.
