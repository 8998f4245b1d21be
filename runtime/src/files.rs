//! Files under the data root: root's alone, written whole.
//!
//! The data root holds the swarm's CA key and join tokens (in the Raft log), every
//! service's environment (bundles, records, assignments) and every container's output.
//! Nothing of it is for other users of the host, and a container's files, setuid bits
//! and device nodes included, must never be reachable from the host by anyone but root
//! (the CVE-2021-41091 class). So:
//! - shoal's processes run with umask 077: every file and directory they make is 0600
//!   or 0700, whatever code makes it;
//! - the data root itself is 0700 (fixed at every start for roots made by older
//!   versions, with [`secure_tree`] over what holds state);
//! - what a container itself sees keeps container semantics, made explicitly: its root
//!   directory, volumes, and directories an image implies are 0755 ([`CONTAINER_DIR`]),
//!   inside directories no other user can enter;
//! - state files are replaced atomically ([`write_atomic`]: a temporary file of the
//!   writer's own, fsync, rename, fsync of the directory; [`replace_file`] without the
//!   syncs, for a health state), so a full disk or a crash leaves the old content or the
//!   new, never a truncated file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mask shoal's processes run with: nothing for group or others.
pub const UMASK: u32 = 0o077;
/// The mode of a directory a container sees as its own (its root, a volume).
pub const CONTAINER_DIR: u32 = 0o755;
/// The mask a container's own processes start with, as under Docker.
pub const CONTAINER_UMASK: u32 = 0o022;

/// Sets this process's umask to [`UMASK`]; returns the one it had.
pub fn private_umask() -> u32 {
    set_umask(UMASK)
}

/// Sets the process's umask; returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask)).bits()
}

/// Makes `dir` (and its missing parents) a directory only root can enter, whatever mode
/// it had.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

/// A directory a container sees (0755), made or fixed.
pub fn container_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    set_mode(dir, CONTAINER_DIR)
}

fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

/// Takes group and other permissions off `root` and everything under it, without
/// following symlinks or entering other filesystems (a container's rootfs mount, a
/// network namespace file); returns how many modes it changed. For trees that hold
/// shoal's own state, not containers' files. A tree removed meanwhile (by another
/// process: a container's directory while `shoal container ls` opens the runtime) is
/// no error.
pub fn secure_tree(root: &Path) -> io::Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let top = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut changed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue; // gone meanwhile
        };
        if m.file_type().is_symlink() || m.dev() != top.dev() {
            continue;
        }
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            match set_mode(&p, mode & !0o077) {
                Ok(()) => changed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        if m.is_dir() {
            match fs::read_dir(&p) {
                Ok(rd) => stack.extend(rd.flatten().map(|e| e.path())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(changed)
}

/// Replaces `path` with `bytes`, atomically and durably: the new content is written to
/// a temporary file beside it (mode 0600) and synced, then renamed over `path`, and the
/// directory synced. A failure (a full disk) leaves `path` as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

/// [`write_atomic`] without the syncs, for a file that is rewritten often and whose
/// last version only matters while the host is up (a health state): a crash or a full
/// disk still leaves the old content or the new.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    // a name of this writer's own: two processes replacing one file never share it
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Bytes free for unprivileged writers on the filesystem that holds `path` (what
/// is left before ENOSPC for anyone but root's reserve, which shoal does not count on).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Whether an error is the disk being full (or the quota spent).
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn secure_tree_takes_group_and_other_bits_off_and_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("swarm")).unwrap();
        fs::write(root.join("swarm/raft.redb"), b"x").unwrap();
        set_mode(&root, 0o755).unwrap();
        set_mode(&root.join("swarm"), 0o755).unwrap();
        set_mode(&root.join("swarm/raft.redb"), 0o4755).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let before_target = mode(Path::new("/etc/passwd"));
        assert_eq!(secure_tree(&root).unwrap(), 3);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("swarm")), 0o700);
        assert_eq!(mode(&root.join("swarm/raft.redb")), 0o4700);
        assert_eq!(
            mode(Path::new("/etc/passwd")),
            before_target,
            "a symlink is not followed"
        );
        assert_eq!(secure_tree(&root).unwrap(), 0, "nothing left to change");
        assert_eq!(
            secure_tree(&root.join("removed meanwhile")).unwrap(),
            0,
            "a tree another process removed is no error"
        );
    }

    #[test]
    fn atomic_writes_replace_whole_and_are_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        fs::write(&p, b"old").unwrap();
        set_mode(&p, 0o644).unwrap();
        write_atomic(&p, b"new content").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new content");
        assert_eq!(mode(&p), 0o600);
        replace_file(&p, b"newer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"newer");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        // (a full disk: tests/security.rs, on a tmpfs, as root)
    }
}
