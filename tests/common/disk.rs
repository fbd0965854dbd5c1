//! A small loop-mounted ext4 file system for tests of a full disk (needs root and
//! e2fsprogs, as CI has).

use std::path::PathBuf;
use std::process::Command;

/// A loop-mounted ext4 file system, unmounted on drop.
pub struct SmallDisk {
    pub mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn new(mib: u64) -> SmallDisk {
        let dir = super::temp_dir();
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        SmallDisk { mount, _dir: dir }
    }

    /// Bytes free, the blocks reserved for root included (the tests run as root).
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string and a zeroed out-parameter of the right type.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::statvfs(path.as_ptr(), &mut st) },
            0,
            "statvfs"
        );
        st.f_bfree as u64 * st.f_frsize as u64
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a broker killed just before may still hold files open for a moment.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (this test needs e2fsprogs and root)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {} (this test needs root for a loop mount)",
        String::from_utf8_lossy(&out.stderr)
    );
}
