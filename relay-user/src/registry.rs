//! TODO(helper): registry
