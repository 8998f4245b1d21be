//! Unpacking one image layer (a tar, plain or gzip) into a directory of its own, in the
//! form overlayfs reads as a lower layer.
//!
//! Layers come from registries and files we do not trust, so every entry is checked
//! before it touches the disk: paths must be relative and stay inside the layer (no `..`,
//! no absolute paths, never through a symlink), hard links must point at an entry already
//! unpacked in the same layer. Symlink *targets* are stored as written: they are only ever
//! followed inside the container's root, never by us.
//!
//! OCI whiteouts become overlayfs whiteouts: `.wh.NAME` is a 0/0 character device named
//! NAME, and `.wh..wh..opq` marks its directory opaque with `trusted.overlay.opaque=y`.
//! Modes, ownership, times, FIFOs and extended attributes (PAX `SCHILY.xattr.*`) are
//! kept where the filesystem allows. Device nodes are left out (a 0/0 character device,
//! overlayfs's own whiteout, is kept): on the host they would be devices.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

use crate::digest::{Digest, HashingReader};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} is refused: {why}")]
    Refused { path: String, why: String },
    #[error("layer is not a readable tar archive: {0}")]
    Corrupt(#[source] io::Error),
    #[error("layer compression {0} is not supported (gzip and uncompressed tar are)")]
    Compression(&'static str),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn refused(path: &Path, why: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        path: path.display().to_string(),
        why: why.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What unpacking a layer found: the digest and size of the uncompressed tar (the
/// layer's diff ID, checked against the image config by the caller).
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub diff_id: Digest,
    pub size: u64,
}

/// Unpacks the layer read from `src` into `dest` (which must exist and be empty).
pub fn unpack_layer(src: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    let mut src = BufReader::new(src);
    let magic = {
        use std::io::BufRead;
        src.fill_buf()
            .map_err(UnpackError::Corrupt)?
            .get(..4)
            .map(|m| m.to_vec())
    };
    let plain: Box<dyn Read> = match magic.as_deref() {
        Some([0x1f, 0x8b, ..]) => Box::new(flate2::read::MultiGzDecoder::new(src)),
        Some([0x28, 0xb5, 0x2f, 0xfd]) => return Err(UnpackError::Compression("zstd")),
        Some([b'B', b'Z', b'h', ..]) => return Err(UnpackError::Compression("bzip2")),
        Some([0xfd, b'7', b'z', b'X']) => return Err(UnpackError::Compression("xz")),
        _ => Box::new(src),
    };
    let mut hashing = HashingReader::new(plain);
    let mut archive = tar::Archive::new(&mut hashing);
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    let mut any = false;
    for entry in archive.entries().map_err(UnpackError::Corrupt)? {
        let mut entry = entry.map_err(UnpackError::Corrupt)?;
        any = true;
        if let Some(dir) = unpack_entry(&mut entry, dest)? {
            dirs.push(dir);
        }
    }
    let _ = archive; // end the borrow of `hashing`
    let (diff_id, size) = hashing.finish().map_err(UnpackError::Corrupt)?;
    if !any && size == 0 {
        return Err(UnpackError::Corrupt(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the layer is empty",
        )));
    }
    // directory times last, since creating their contents changed them
    for (dir, mtime) in dirs.iter().rev() {
        // a later entry may have replaced the directory (or a parent) with a symlink:
        // never follow one out of the layer
        if still_inside(dest, dir) {
            set_mtime(dir, *mtime)?;
        }
    }
    Ok(Unpacked { diff_id, size })
}

/// Turns an entry's path into a path under `dest`, refusing anything that could leave it.
/// `None` means the entry is the layer's root itself.
fn contained(dest: &Path, raw: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(refused(raw, "its path contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(raw, "its path is absolute"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Ok(None);
    }
    // every parent must be a real directory inside dest, never a symlink
    let mut cur = dest.to_path_buf();
    let parents: Vec<_> = out
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for c in parents {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refused(
                    raw,
                    format!(
                        "it would be written through the symlink {}",
                        rel(dest, &cur)
                    ),
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(refused(
                    raw,
                    format!("its parent {} is not a directory", rel(dest, &cur)),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // a directory the layer implies but does not list: 0755, as Docker's
                crate::files::container_dir(&cur).map_err(io_err(&cur))?;
            }
            Err(e) => {
                return Err(UnpackError::Io {
                    path: cur,
                    source: e,
                })
            }
        }
    }
    Ok(Some(dest.join(out)))
}

fn rel(dest: &Path, p: &Path) -> String {
    p.strip_prefix(dest).unwrap_or(p).display().to_string()
}

/// Removes whatever is at `path` unless it is a directory (a later entry replaces an
/// earlier one, as tar does).
fn clear(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => fs::remove_file(path).map_err(io_err(path)),
        Err(_) => Ok(()),
    }
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    dest: &Path,
) -> Result<Option<(PathBuf, i64)>, UnpackError> {
    let raw = entry.path().map_err(UnpackError::Corrupt)?.into_owned();
    let header = entry.header().clone();
    let kind = header.entry_type();
    let Some(path) = contained(dest, &raw)? else {
        return Ok(None); // "./": the root's own metadata is the store's, not the layer's
    };
    let name = path
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    if let Some(hidden) = name.strip_prefix(b".wh.") {
        let parent = path.parent().unwrap_or(dest);
        if hidden == b".wh..opq" {
            set_xattr(parent, "trusted.overlay.opaque", b"y")?;
        } else if hidden.is_empty()
            || hidden == b"."
            || hidden == b".."
            || hidden.starts_with(b".wh.")
        {
            return Err(refused(&raw, "it is a malformed whiteout"));
        } else {
            let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
            remove_any(&target)?;
            mknod(&target, SFlag::S_IFCHR, 0, 0)?;
        }
        return Ok(None);
    }
    let mode = header.mode().map_err(UnpackError::Corrupt)? & 0o7777;
    let uid = header.uid().map_err(UnpackError::Corrupt)?;
    let gid = header.gid().map_err(UnpackError::Corrupt)?;
    let mtime = header.mtime().map_err(UnpackError::Corrupt)? as i64;
    let mut is_dir = false;
    match kind {
        tar::EntryType::Directory => {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    fs::create_dir(&path).map_err(io_err(&path))?;
                }
                Err(_) => fs::create_dir(&path).map_err(io_err(&path))?,
            }
            is_dir = true;
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            clear(&path)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?;
            copy_entry(entry, &mut f, &path)?;
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(UnpackError::Corrupt)?
                .ok_or_else(|| refused(&raw, "it is a symlink with no target"))?;
            clear(&path)?;
            std::os::unix::fs::symlink(&*target, &path).map_err(io_err(&path))?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(UnpackError::Corrupt)?
                .ok_or_else(|| refused(&raw, "it is a hard link with no target"))?
                .into_owned();
            let Some(src) = contained(dest, &target).map_err(|_| {
                refused(
                    &raw,
                    format!(
                        "it is a hard link to {} outside the layer",
                        target.display()
                    ),
                )
            })?
            else {
                return Err(refused(&raw, "it is a hard link to the layer root"));
            };
            let m = fs::symlink_metadata(&src).map_err(|_| {
                refused(
                    &raw,
                    format!(
                        "it is a hard link to {}, which the layer does not hold",
                        target.display()
                    ),
                )
            })?;
            if m.is_dir() {
                return Err(refused(&raw, "it is a hard link to a directory"));
            }
            clear(&path)?;
            fs::hard_link(&src, &path).map_err(io_err(&path))?;
            return Ok(None); // a link shares its target's metadata
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let major = header
                .device_major()
                .map_err(UnpackError::Corrupt)?
                .unwrap_or(0);
            let minor = header
                .device_minor()
                .map_err(UnpackError::Corrupt)?
                .unwrap_or(0);
            if kind != tar::EntryType::Fifo && (major, minor) != (0, 0) {
                // a device node from an image would be a device on the host (where root
                // can reach the layer) and is of no use in a container, whose /dev is
                // its own: left out, as with rootless engines
                tracing::warn!(entry = %raw.display(), major, minor, "a layer's device node is left out");
                return Ok(None);
            }
            let kind = match kind {
                tar::EntryType::Char => SFlag::S_IFCHR,
                tar::EntryType::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            clear(&path)?;
            mknod(&path, kind, major, minor)?;
        }
        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(None),
        other => {
            return Err(refused(
                &raw,
                format!("its tar entry type {other:?} is not supported"),
            ))
        }
    }
    std::os::unix::fs::lchown(&path, Some(uid as u32), Some(gid as u32)).map_err(io_err(&path))?;
    if kind != tar::EntryType::Symlink {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
    }
    if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Corrupt)? {
        for ext in exts {
            let ext = ext.map_err(UnpackError::Corrupt)?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                let name = String::from_utf8_lossy(name).into_owned();
                if name.starts_with("trusted.overlay.") {
                    continue; // overlayfs acts on these: only whiteouts may set them
                }
                set_xattr(&path, &name, ext.value_bytes())?;
            }
        }
    }
    if is_dir {
        return Ok(Some((path, mtime)));
    }
    set_mtime(&path, mtime)?;
    Ok(None)
}

/// Whether `path` is still a real directory inside `dest`, reached through no symlink.
fn still_inside(dest: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(dest) else {
        return false;
    };
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Copies an entry's data, telling a short or corrupt archive (read side) from a full
/// disk (write side).
fn copy_entry(src: &mut impl Read, dst: &mut fs::File, path: &Path) -> Result<(), UnpackError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Corrupt(e)),
        };
        io::Write::write_all(dst, &buf[..n]).map_err(io_err(path))?;
    }
}

fn remove_any(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => fs::remove_file(path).map_err(io_err(path)),
        Err(_) => Ok(()),
    }
}

fn mknod(path: &Path, kind: SFlag, major: u32, minor: u32) -> Result<(), UnpackError> {
    let dev = nix::sys::stat::makedev(major.into(), minor.into());
    nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(0o600), dev).map_err(|e| {
        UnpackError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        }
    })
}

fn set_mtime(path: &Path, secs: i64) -> Result<(), UnpackError> {
    let t = TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| UnpackError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Sets an extended attribute without following symlinks. Filesystems that do not support
/// it (or a namespace we may not write) make this a no-op, as Docker does.
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| refused(path, "its path holds a NUL byte"))?;
    let n = CString::new(name).map_err(|_| refused(path, "an xattr name holds a NUL byte"))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; value is a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTSUP) | Some(libc::EPERM) => Ok(()),
        _ => Err(UnpackError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// Appends an entry with a raw name (bypassing tar's own checks, as an attacker would).
    pub(crate) fn raw(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().expect("gnu header");
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }

    fn layer(entries: &[(&str, tar::EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (n, k, l, d) in entries {
            raw(&mut b, n, *k, *l, d);
        }
        b.into_inner().expect("tar")
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    #[test]
    fn unpacks_files_links_whiteouts_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            ("etc/", D, None, b""),
            ("etc/hosts", F, None, b"127.0.0.1 localhost\n"),
            ("etc/hosts.link", H, Some("etc/hosts"), b""),
            ("bin/sh", S, Some("/bin/busybox"), b""),
            ("var/.wh.cache", F, None, b""),
            ("opt/.wh..wh..opq", F, None, b""),
        ]);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let u = unpack_layer(gz.as_slice(), dir.path()).unwrap();
        assert_eq!(
            u.diff_id,
            Digest::of(&tar),
            "diff ID is the digest of the uncompressed tar"
        );
        let d = dir.path();
        assert_eq!(
            fs::read_to_string(d.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        let m = fs::metadata(d.join("etc/hosts")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
            (1000, 1000, 0o644, 1_600_000_000)
        );
        assert_eq!(
            m.ino(),
            fs::metadata(d.join("etc/hosts.link")).unwrap().ino(),
            "hard link shares the inode"
        );
        assert_eq!(
            fs::read_link(d.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        let wh = fs::symlink_metadata(d.join("var/cache")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "whiteout is a 0/0 char device"
        );
        assert!(!d.join("var/.wh.cache").exists());
        assert!(!d.join("opt/.wh..wh..opq").exists());
        assert_eq!(
            xattr(&d.join("opt"), c"trusted.overlay.opaque").unwrap(),
            b"y",
            "opaque directory marked for overlayfs"
        );
        assert_eq!(
            fs::metadata(d.join("etc")).unwrap().mtime(),
            1_600_000_000,
            "directory times restored last"
        );
    }

    /// A device node from a layer would be a device on the host; a directory only implied
    /// by a path is made as Docker makes it (0755), whatever the process's umask.
    #[test]
    fn device_nodes_are_left_out_and_implied_directories_are_0755() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, major, minor) in [
            ("dev/sda", tar::EntryType::Block, 8, 0),
            ("srv/mem", tar::EntryType::Char, 1, 1),
            ("srv/gone", tar::EntryType::Char, 0, 0),
            ("srv/pipe", tar::EntryType::Fifo, 0, 0),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_path(name).unwrap();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o666);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        raw(&mut b, "a/b/c.txt", F, None, b"x");
        let tar = b.into_inner().unwrap();
        let old = crate::files::set_umask(0o077);
        let res = unpack_layer(tar.as_slice(), dir.path());
        crate::files::set_umask(old);
        res.unwrap();
        let d = dir.path();
        assert!(!d.join("dev/sda").exists(), "block device left out");
        assert!(
            fs::symlink_metadata(d.join("srv/mem")).is_err(),
            "char device left out"
        );
        let wh = fs::symlink_metadata(d.join("srv/gone")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert!(fs::symlink_metadata(d.join("srv/pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
        for implied in ["a", "a/b", "dev", "srv"] {
            assert_eq!(
                fs::metadata(d.join(implied)).unwrap().mode() & 0o7777,
                0o755,
                "{implied}"
            );
        }
    }

    #[test]
    fn refuses_entries_that_escape() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("dotdot", layer(&[("../evil", F, None, b"x")]), "'..'"),
            (
                "nested dotdot",
                layer(&[("a/../../evil", F, None, b"x")]),
                "'..'",
            ),
            (
                "absolute",
                layer(&[("/etc/evil", F, None, b"x")]),
                "absolute",
            ),
            (
                "through symlink",
                layer(&[
                    ("escape", S, Some("/"), b""),
                    ("escape/etc/evil", F, None, b"x"),
                ]),
                "through the symlink",
            ),
            (
                "relative symlink dir",
                layer(&[("up", S, Some("../../.."), b""), ("up/evil", F, None, b"x")]),
                "through the symlink",
            ),
            (
                "hard link out",
                layer(&[("evil", H, Some("../../etc/passwd"), b"")]),
                "outside the layer",
            ),
            (
                "hard link absolute",
                layer(&[("evil", H, Some("/etc/passwd"), b"")]),
                "outside the layer",
            ),
            (
                "hard link missing",
                layer(&[("evil", H, Some("nothing"), b"")]),
                "does not hold",
            ),
        ];
        for (name, tar, why) in cases {
            let outer = tempfile::tempdir().unwrap();
            let dest = outer.path().join("layer");
            fs::create_dir(&dest).unwrap();
            let err = unpack_layer(tar.as_slice(), &dest)
                .expect_err(name)
                .to_string();
            assert!(err.contains(why), "{name}: {err}");
            assert_eq!(
                fs::read_dir(outer.path()).unwrap().count(),
                1,
                "{name}: nothing written beside the layer"
            );
            assert!(!Path::new("/etc/evil").exists());
        }
    }

    #[test]
    fn directory_swapped_for_a_symlink_is_not_followed() {
        let outer = tempfile::tempdir().unwrap();
        let victim = outer.path().join("victim");
        fs::create_dir_all(victim.join("etc")).unwrap();
        let before = fs::metadata(victim.join("etc")).unwrap().mtime();
        let dest = outer.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let target = victim.to_str().unwrap().to_string();
        let tar = layer(&[
            ("a/", D, None, b""),
            ("a/etc/", D, None, b""),
            (".wh.a", F, None, b""),
            ("a", S, Some(&target), b""),
        ]);
        unpack_layer(tar.as_slice(), &dest).unwrap();
        assert_eq!(fs::read_link(dest.join("a")).unwrap(), victim);
        assert_eq!(
            fs::metadata(victim.join("etc")).unwrap().mtime(),
            before,
            "no directory time was set through the symlink"
        );
    }

    #[test]
    fn overlay_xattrs_from_layers_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
            ("SCHILY.xattr.user.keep", &b"1"[..]),
        ])
        .unwrap();
        b.append_data(&mut h, "d/", &[][..]).unwrap();
        let tar = b.into_inner().unwrap();
        unpack_layer(tar.as_slice(), dir.path()).unwrap();
        // this filesystem and this process can set trusted.* xattrs, so a missing one was
        // left out, not refused
        let control = dir.path().join("control");
        fs::create_dir(&control).unwrap();
        set_xattr(&control, "trusted.overlay.redirect", b"/etc").unwrap();
        assert_eq!(
            xattr(&control, c"trusted.overlay.redirect").unwrap(),
            b"/etc",
            "needs root and a filesystem with trusted xattrs"
        );
        let d = dir.path().join("d");
        assert_eq!(xattr(&d, c"user.keep").unwrap(), b"1", "other xattrs kept");
        let e = xattr(&d, c"trusted.overlay.redirect").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENODATA),
            "trusted.overlay.* not applied: {e}"
        );
    }

    /// The value of `path`'s xattr `name` (not following a symlink).
    fn xattr(path: &Path, name: &std::ffi::CStr) -> io::Result<Vec<u8>> {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let mut v = [0u8; 256];
        // SAFETY: valid C strings, and a buffer of v.len() bytes
        let n =
            unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v[..n as usize].to_vec())
    }

    #[test]
    fn refuses_truncated_and_corrupt_archives() {
        let tar = layer(&[("big", F, None, &[7u8; 5000])]);
        let dir = tempfile::tempdir().unwrap();
        assert!(
            unpack_layer(&tar[..3000], dir.path()).is_err(),
            "truncated in the middle of an entry"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        };
        let n = gz.len();
        gz.truncate(n - 10);
        assert!(
            unpack_layer(gz.as_slice(), dir.path()).is_err(),
            "truncated gzip"
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack_layer(&b"this is not a tar archive at all"[..], dir.path()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_layer(&[0x28u8, 0xb5, 0x2f, 0xfd, 0, 0][..], dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zstd") && err.contains("not supported"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack_layer(&[][..], dir.path())
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
