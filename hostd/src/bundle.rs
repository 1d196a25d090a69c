//! App bundles: a tar archive whose `index.js` is the bundled module. Validation happens
//! before anything touches the disk outside a temporary directory.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The file every bundle must contain: the module whose default export has `fetch`.
pub const ENTRY_FILE: &str = "index.js";

/// Why a bundle was refused. Messages are shown to the user as they are.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is not a readable tar archive: {0}")]
    NotTar(io::Error),
    #[error("bundle entry {0:?} escapes the bundle (absolute path or '..')")]
    PathEscape(String),
    #[error("bundle entry {0:?} is not a regular file or directory (links and devices are refused)")]
    BadEntryType(String),
    #[error("bundle holds more than {0} files")]
    TooManyFiles(usize),
    #[error("bundle unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("bundle has no {ENTRY_FILE} at its top level")]
    NoEntry,
    #[error("storing bundle: {0}")]
    Io(#[from] io::Error),
}

/// Bounds on what a bundle may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub files_max: usize,
    pub unpacked_bytes_max: u64,
}

/// Unpacks `archive` into `destination` (which must not exist yet), read-only. Unpacks into a
/// sibling temporary directory first and renames, so `destination` is complete or absent.
pub fn unpack(archive: &[u8], destination: &Path, limits: Limits) -> Result<(), BundleError> {
    let parent = destination.parent().ok_or_else(|| io::Error::other("bundle destination has no parent"))?;
    std::fs::create_dir_all(parent)?;
    let staging = tempfile_dir(parent)?;
    let result = unpack_into(archive, &staging, limits);
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    make_read_only(&staging)?;
    if let Err(error) = std::fs::rename(&staging, destination) {
        let _ = std::fs::remove_dir_all(&staging);
        // Another deploy of the same bundle won the race: the content is identical.
        if !destination.join(ENTRY_FILE).is_file() {
            return Err(error.into());
        }
    }
    Ok(())
}

fn tempfile_dir(parent: &Path) -> io::Result<PathBuf> {
    for attempt in 0..100u32 {
        let candidate = parent.join(format!(".staging-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free staging directory name"))
}

fn unpack_into(archive: &[u8], staging: &Path, limits: Limits) -> Result<(), BundleError> {
    let mut tar = tar::Archive::new(archive);
    let (mut files, mut bytes) = (0usize, 0u64);
    for entry in tar.entries().map_err(BundleError::NotTar)? {
        let mut entry = entry.map_err(BundleError::NotTar)?;
        let path = entry.path().map_err(BundleError::NotTar)?.into_owned();
        let shown = path.display().to_string();
        let relative = safe_relative(&path).ok_or_else(|| BundleError::PathEscape(shown.clone()))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(staging.join(&relative))?;
            continue;
        }
        if !kind.is_file() {
            return Err(BundleError::BadEntryType(shown));
        }
        files += 1;
        if files > limits.files_max {
            return Err(BundleError::TooManyFiles(limits.files_max));
        }
        let target = staging.join(&relative);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let budget = limits.unpacked_bytes_max - bytes;
        let mut out = std::fs::File::create(&target)?;
        let copied = io::copy(&mut (&mut entry).take(budget + 1), &mut out)?;
        bytes += copied;
        if bytes > limits.unpacked_bytes_max {
            return Err(BundleError::TooLarge(limits.unpacked_bytes_max));
        }
    }
    if !staging.join(ENTRY_FILE).is_file() {
        return Err(BundleError::NoEntry);
    }
    Ok(())
}

/// `path` with `.` removed, if it has only normal components.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn make_read_only(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_read_only(&entry.path())?;
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o555))?;
        } else {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o444))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { files_max: 10, unpacked_bytes_max: 1024 };

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // Write the name unchecked so tests can build hostile archives.
            header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn unpacks_a_good_bundle_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b");
        unpack(&archive(&[("index.js", b"export default {}"), ("lib/a.js", b"1")]), &dest, LIMITS).unwrap();
        assert_eq!(std::fs::read(dest.join("index.js")).unwrap(), b"export default {}");
        assert!(std::fs::metadata(dest.join("lib/a.js")).unwrap().permissions().readonly());
    }

    #[test]
    fn refuses_escapes_missing_entry_and_excess() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b");
        let escape = unpack(&archive(&[("index.js", b""), ("../evil", b"x")]), &dest, LIMITS);
        assert!(matches!(escape, Err(BundleError::PathEscape(_))), "{escape:?}");
        assert!(matches!(unpack(&archive(&[("/etc/x", b"")]), &dest, LIMITS), Err(BundleError::PathEscape(_))));
        assert!(matches!(unpack(&archive(&[("a.js", b"")]), &dest, LIMITS), Err(BundleError::NoEntry)));
        let big = vec![0u8; 2000];
        assert!(matches!(unpack(&archive(&[("index.js", &big)]), &dest, LIMITS), Err(BundleError::TooLarge(_))));
        let many: Vec<(String, &[u8])> = (0..11).map(|i| (format!("f{i}"), &b""[..])).collect();
        let many: Vec<(&str, &[u8])> = many.iter().map(|(p, d)| (p.as_str(), *d)).collect();
        assert!(matches!(unpack(&archive(&many), &dest, LIMITS), Err(BundleError::TooManyFiles(_))));
        assert!(unpack(b"not a tar at all, just some bytes", &dest, LIMITS).is_err());
        assert!(!dest.exists(), "nothing is left behind by a refused bundle");
    }
}
