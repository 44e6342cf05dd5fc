//! The step executor seam.
