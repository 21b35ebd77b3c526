//! bpffs state made by a test or a benchmark, removed on drop (a panic included): a pin folder,
//! and the pinned links of one test cgroup.
use oxilium::bpf::{loader, socklb};
use std::path::{Path, PathBuf};

/// A pin folder `/sys/fs/bpf/NAME`, made ready for pinning; removed on drop with everything
/// pinned in it (which detaches pinned links and frees maps no program holds).
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(name: &str) -> PinDir {
        let dir = PinDir(PathBuf::from("/sys/fs/bpf").join(name));
        loader::prepare_pin_dir(&dir.0).expect("bpffs pin folder (root?)");
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = loader::remove_pins(&self.0);
    }
}

/// The socket LB's links of `cgroup`, pinned in `pin_dir`; removing their pins on drop detaches
/// them (drop this before the cgroup).
pub struct CgroupLinks {
    pin_dir: PathBuf,
    cgroup_id: u64,
}

impl CgroupLinks {
    pub fn new(pin_dir: &Path, cgroup: &Path) -> CgroupLinks {
        CgroupLinks {
            pin_dir: pin_dir.to_path_buf(),
            cgroup_id: socklb::cgroup_id(cgroup).expect("cgroup id"),
        }
    }
}

impl Drop for CgroupLinks {
    fn drop(&mut self) {
        let _ = socklb::detach_id(&self.pin_dir, self.cgroup_id);
    }
}
