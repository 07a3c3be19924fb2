//! TODO(helper): state
