//! The reconciler's record of a selection table.

/// What the reconciler keeps of a selection table the datapath holds: its length and a hash of
/// its backend ids. The table itself lives in the kernel (a Maglev table of 16,381 slots is
/// 64 KiB): it is read back only to patch a table of the same size in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TableDigest {
    pub len: u32,
    hash: u64,
}

impl TableDigest {
    pub fn of(table: &[u32]) -> TableDigest {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        table.hash(&mut h);
        TableDigest {
            len: table.len() as u32,
            hash: h.finish(),
        }
    }
}
