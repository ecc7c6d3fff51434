//! Unit tests of the btrfs reader on hand-made structures.
