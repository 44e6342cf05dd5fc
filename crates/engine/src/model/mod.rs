//! Model families and loaders.
